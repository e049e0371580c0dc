"""SMTP smuggling through the relay (issue 13, item 1): one DATA is one message upstream.

Each variant of :data:`VARIANTS` is an authenticated session (alice) whose message text holds a
fake end of data, then a whole second transaction from bob (MAIL, RCPT, DATA, text), then the real
``<CR><LF>.<CR><LF>``. Sent byte for byte (:mod:`tests.security.rawsmtp`) through the relay to
the real test Postfix (3.7, ``smtpd_forbid_bare_newline = no``: it takes ``<LF>.<LF>`` and the
like for the end, as many servers do), the test asserts what the client was told (one reply for
the DATA, then its NOOP's and QUIT's own) and what Postfix did: exactly one message, from alice,
to alice's recipient, holding bob's commands as text; nothing to bob's recipient, no bob in
Postfix's log. ``read_data`` itself is tried with random pieces against a reference reading.
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from proxy.smtp.databuf import CHUNK, DataResult, MessageBuffer, read_data, unstuff
from tests.conftest import Cli
from tests.relaykit import HOST, PASSWORD, RelayEnv, eventually, running
from tests.security.rawsmtp import RawSMTP
from tests.servers import Postfix


@dataclass(frozen=True)
class Variant:
    """A fake end of data; ``cut``: the data is written in two pieces, split inside the fake end
    at this offset; ``pad``: bytes of text before it (over 1 MiB: the relay spills to disk and
    streams the message upstream with DATA instead of one BDAT); ``lf``: bob's transaction has
    bare LF line ends."""

    id: str
    fake_end: bytes
    cut: int | None = None
    pad: int = 0
    lf: bool = False


_ENDS = {
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr": b"\r\n.\r",
    "cr-dot-crlf": b"\r.\r\n",
    "lf-dot-cr": b"\n.\r",
    "cr-dot-lf": b"\r.\n",
    "crlf-nul-dot-crlf": b"\r\n\x00.\r\n",
    "crlf-dot-nul-crlf": b"\r\n.\x00\r\n",
    "crlf-dot-cr-crlf": b"\r\n.\r\r\n",
    "crlf-dot-lf-crlf": b"\r\n.\n\r\n",
    "crlf-cr-dot-crlf": b"\r\n\r.\r\n",
    "lf-lf-dot-lf-lf": b"\n\n.\n\n",
    "crlf-stuffed-dot-crlf": b"\r\n..\r\n",
    "crlf-space-dot-crlf": b"\r\n .\r\n",
    "crlf-dot-space-crlf": b"\r\n. \r\n",
    "lf-cr-dot-lf-cr": b"\n\r.\n\r",
    "crlf-dot-dot-lf": b"\r\n..\n",
    "crlf-nul-lf-dot-lf": b"\r\n\x00\n.\n",
}
VARIANTS: list[Variant] = [Variant(name, end) for name, end in _ENDS.items()]
VARIANTS += [Variant(f"crlf-dot-lf/split-{cut}", b"\r\n.\n", cut=cut) for cut in (1, 2, 3)]
VARIANTS += [Variant(f"lf-dot-crlf/split-{cut}", b"\n.\r\n", cut=cut) for cut in (1, 2, 3)]
VARIANTS += [Variant(f"cr-dot-cr/split-{cut}", b"\r.\r", cut=cut) for cut in (1, 2)]
VARIANTS += [  # the fake end across the relay's 64 KiB read, and in a message spilled to disk
    Variant("lf-dot-lf/at-chunk-edge", b"\n.\n", cut=1, pad=CHUNK - 1),
    Variant("crlf-dot-lf/at-chunk-edge", b"\r\n.\n", cut=2, pad=CHUNK - 2),
    Variant("lf-dot-lf/spilled", b"\n.\n", pad=1_300_000),
    Variant("crlf-dot-lf/spilled", b"\r\n.\n", pad=1_300_000, cut=2),
    Variant("lf-dot-lf/lf-commands", b"\n.\n", lf=True),
    Variant("crlf-dot-lf/lf-commands", b"\r\n.\n", lf=True),
]


def _external(name: str) -> str:
    tag = uuid.uuid4().hex[:8]
    return f"{name}{tag}@customer-{tag}.example"


@dataclass
class Attempt:
    """One variant's session: the addresses it used and what the client was told."""

    variant: Variant
    to: str
    bob: str
    smuggled_to: str
    replies: list[str]


def _payload(variant: Variant, alice: str, to: str, bob: str, smuggled_to: str) -> list[bytes]:
    head = (
        f"From: {alice}\r\nTo: {to}\r\nSubject: variant {variant.id}\r\n\r\n"
        "first line of alice's message\r\n"
    ).encode()
    text = head + b"x" * max(variant.pad - len(head), 0)
    smuggled = (
        f"MAIL FROM:<{bob}>\r\nRCPT TO:<{smuggled_to}>\r\nDATA\r\nFrom: {bob}\r\n"
        f"To: {smuggled_to}\r\nSubject: smuggled\r\n\r\nsmuggled text\r\n"
    ).encode()
    if variant.lf:
        smuggled = smuggled.replace(b"\r\n", b"\n") + b"\r\n"
    data = text + variant.fake_end + smuggled + b".\r\n"
    if variant.cut is None:
        return [data]
    edge = len(text) + variant.cut
    return [data[:edge], data[edge:]]


async def _attempt(env: RelayEnv, alice: str, variant: Variant) -> Attempt:
    to, bob, smuggled_to = _external("to"), _external("bob"), _external("smuggled")
    client = await RawSMTP.login(HOST, env.port, alice, PASSWORD)
    try:
        assert (await client.command(f"MAIL FROM:<{alice}>".encode())).startswith("250")
        assert (await client.command(f"RCPT TO:<{to}>".encode())).startswith("250")
        assert (await client.command(b"DATA")).startswith("354")
        await client.write(*_payload(variant, alice, to, bob, smuggled_to))
        replies = [await client.reply()]
        await client.write(b"NOOP\r\nQUIT\r\n")
        replies += await client.replies(2)
        leftover = await client.rest()
        if leftover:
            replies.append(f"then: {leftover!r}")
    finally:
        await client.close()
    return Attempt(variant, to, bob, smuggled_to, replies)


def _judge(attempt: Attempt, postfix: Postfix, alice: str, log: str) -> str | None:
    """What went wrong with one attempt, or None."""
    if postfix.delivered(attempt.smuggled_to) or attempt.bob in log:
        return "Postfix took bob's smuggled transaction"
    replies = attempt.replies
    if (
        len(replies) != 3
        or not re.match(r"250 2\.0\.0 Ok: .*queued as ", replies[0])
        or not replies[1].startswith("250 ")
        or not replies[2].startswith("221 ")
    ):
        return f"client was told {replies!r}"
    got = postfix.delivered(attempt.to)
    if len(got) != 1:
        return f"{len(got)} messages for alice's recipient"
    if f"Return-Path: <{alice}>".encode() not in got[0] or b"MAIL FROM:<" not in got[0]:
        return "alice's message is not from alice, or lacks bob's commands as text"
    return None


@pytest.mark.servers
async def test_smuggling_matrix_through_the_relay_to_postfix(
    sqlite_cli: Cli, sqlite_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(
        sqlite_cli, sqlite_url, tmp_path, postfix, allow_plaintext_auth_on_loopback=True
    ) as env:
        alice = env.user("alice")
        attempts = [await _attempt(env, alice, variant) for variant in VARIANTS]
        for attempt in attempts:
            await eventually(lambda a=attempt: postfix.delivered(a.to), timeout=30)  # type: ignore[misc]
        await asyncio.sleep(1.0)  # time for anything smuggled to arrive too
        log = postfix.log()
        failures = {
            a.variant.id: why
            for a in attempts
            if (why := _judge(a, postfix, alice, log)) is not None
        }
    summary = (
        f"smuggling matrix: {len(VARIANTS)} variants tried through the relay to Postfix, "
        f"{len(VARIANTS) - len(failures)} held, {len(failures)} failed"
    )
    print(summary)
    assert not failures, f"{summary}: {failures}"


@pytest.mark.servers
async def test_pipelined_commands_after_the_real_end_are_the_clients_own(
    sqlite_cli: Cli, sqlite_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    """Commands after the real end are commands, of alice's session: bob's sender is refused."""
    async with running(
        sqlite_cli, sqlite_url, tmp_path, postfix, allow_plaintext_auth_on_loopback=True
    ) as env:
        alice, to, bob, smuggled_to = (
            env.user("alice"),
            _external("to"),
            _external("bob"),
            _external("smuggled"),
        )
        client = await RawSMTP.login(HOST, env.port, alice, PASSWORD)
        await client.write(f"MAIL FROM:<{alice}>\r\nRCPT TO:<{to}>\r\nDATA\r\n".encode())
        assert [r[:3] for r in await client.replies(3)] == ["250", "250", "354"]
        await client.write(
            f"Subject: real\r\n\r\ntext\r\n.\r\nMAIL FROM:<{bob}>\r\n"
            f"RCPT TO:<{smuggled_to}>\r\nDATA\r\nQUIT\r\n".encode()
        )
        replies = await client.replies(5)
        await client.close()
        assert re.match(r"250 2\.0\.0 Ok: .*queued as ", replies[0])
        assert replies[1].startswith("553 5.7.1") and [r[:3] for r in replies[2:]] == [
            "503",
            "503",
            "221",
        ]
        assert len(await env.delivered(to)) == 1
        await asyncio.sleep(0.5)
        assert postfix.delivered(smuggled_to) == [] and bob not in postfix.log()


@pytest.mark.servers
async def test_relay_offers_no_chunking_to_clients(
    sqlite_cli: Cli, sqlite_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    """No BDAT from clients (aiosmtpd has none): the only way in is DATA, read as above."""
    async with running(
        sqlite_cli, sqlite_url, tmp_path, postfix, allow_plaintext_auth_on_loopback=True
    ) as env:
        alice, to = env.user("alice"), _external("to")
        client = await RawSMTP.login(HOST, env.port, alice, PASSWORD)
        ehlo = await client.command(b"EHLO again.example")
        assert "CHUNKING" not in ehlo.upper() and "BINARYMIME" not in ehlo.upper()
        assert (await client.command(f"MAIL FROM:<{alice}>".encode())).startswith("250")
        assert (await client.command(f"RCPT TO:<{to}>".encode())).startswith("250")
        assert (await client.command(b"BDAT 0 LAST")).startswith("500")
        assert (await client.command(b"NOOP")).startswith("250")
        await client.close()


# --- read_data on its own: random pieces against a reference reading -------------------------


class PieceReader:
    """Hands out the given pieces, one per read."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    async def read(self, _size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


def reference(stream: bytes) -> tuple[bytes, bytes]:
    """The message (RFC 5322, CRLF) and the bytes after the end, read the slow obvious way:
    the end is the first CRLF . CRLF (after a virtual CRLF); bare CR, bare LF and CRLF each end
    a line; every line loses one leading dot and its NULs."""
    whole = b"\r\n" + stream
    end = whole.index(b"\r\n.\r\n")
    text, rest = whole[2 : end + 2], whole[end + 5 :]
    lines = re.split(rb"\r\n|\r|\n", text)[:-1] if text else []
    raw = b"".join(
        (line[1:] if line.startswith(b".") else line).replace(b"\0", b"") + b"\r\n"
        for line in lines
    )
    return raw, rest


def _canonical(wire: bytes) -> bool:
    """CRLF only, no NUL, and no line that is a lone dot (what every upstream reads alike)."""
    if wire.count(b"\r") != wire.count(b"\r\n") or wire.count(b"\n") != wire.count(b"\r\n"):
        return False
    return b"\0" not in wire and b"\r\n.\r\n" not in b"\r\n" + wire


_TOKENS = [
    b"\r",
    b"\n",
    b"\r\n",
    b".",
    b"..",
    b"\x00",
    b"a",
    b"Subject: x",
    b" ",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"MAIL FROM:<bob@x>",
    b"\r\n..\r\n",
    b"\r\n.\r",
]


async def _read(
    pieces: list[bytes], spill_at: int, tmp: Path
) -> tuple[DataResult, bytes, bytes, bytes]:
    buffer = MessageBuffer(spill_at=spill_at, spill_dir=tmp)
    reader = PieceReader(pieces)
    try:
        result, rest = await read_data(reader, buffer, None)  # type: ignore[arg-type]
        return result, buffer.wire(), buffer.raw(), rest + b"".join(reader.pieces)
    finally:
        buffer.close()


async def test_read_data_random_pieces_match_the_reference(tmp_path: Path) -> None:
    rng = random.Random(13)
    for _ in range(1500):
        stream = b"".join(rng.choice(_TOKENS) for _ in range(rng.randrange(0, 40)))
        stream += (b"\r\n" if stream else rng.choice([b"\r\n", b""])) + b".\r\n"
        stream += rng.choice([b"", b"NOOP\r\n"])
        cuts = sorted(rng.sample(range(1, len(stream)), min(rng.randrange(0, 6), len(stream) - 1)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        result, wire, raw, rest = await _read(pieces, rng.choice([8, 1 << 20]), tmp_path)
        expected_raw, expected_rest = reference(stream)
        assert result is DataResult.OK, stream
        assert (raw, rest) == (expected_raw, expected_rest), (stream, pieces)
        assert _canonical(wire) and unstuff(wire) == raw, (stream, pieces)


async def test_read_data_end_and_fake_ends_across_the_chunk_edge(tmp_path: Path) -> None:
    """Whole 64 KiB reads (as from a socket with everything waiting), a marker at every offset
    around the edge."""
    for marker in (b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\r\n"):
        for offset in range(CHUNK - 6, CHUNK + 2):
            stream = b"a" * offset + marker + b"after\r\n.\r\nRSET\r\n"
            pieces = [stream[i : i + CHUNK] for i in range(0, len(stream), CHUNK)]
            result, wire, raw, rest = await _read(pieces, 1 << 20, tmp_path)
            assert result is DataResult.OK and _canonical(wire)
            assert (raw, rest) == reference(stream), (marker, offset)
