"""A failure during DATA (issue 13, item 2): the rest of the message is data, answered once.

A large message (over the relay's 1 MiB spill threshold) goes through the relay to the real test
Postfix while its spill directory disappears, while the spool directory becomes a regular file,
and while the disk refuses to write (the process's file size limit, which binds root too). Its
text after the spill point is a whole SMTP transaction to an outsider (``evil``); had the relay
read it as commands, Postfix would deliver to evil. Each test asserts what the client was told
(one reply for the DATA, then NOOP's and QUIT's own) and what Postfix delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from crm.spool.queue import spool_dir
from proxy.smtp.databuf import DataResult, MessageBuffer, read_data
from tests.conftest import Cli
from tests.relaykit import HOST, PASSWORD, RelayEnv, running
from tests.security.rawsmtp import RawSMTP
from tests.servers import Postfix

pytestmark = pytest.mark.servers
HALF = 512 * 1024  # written before the fault: below the 1 MiB spill threshold


def _external(name: str) -> str:
    tag = uuid.uuid4().hex[:8]
    return f"{name}{tag}@customer-{tag}.example"


def _text(alice: str, to: str, evil: str, size: int) -> bytes:
    """A message of about ``size`` bytes (whole CRLF lines) whose lines, from the first half MiB
    on, hold commands: a whole transaction to ``evil`` again and again."""
    head = f"From: {alice}\r\nTo: {to}\r\nSubject: large\r\n\r\n".encode()
    line = b"a line of the large message, nothing to see here\r\n"
    commands = f"RSET\r\nMAIL FROM:<{alice}>\r\nRCPT TO:<{evil}>\r\nDATA\r\n".encode()
    first = head + line * (HALF // len(line))
    return first + commands * ((size - len(first)) // len(commands))


async def _send_with_fault(
    env: RelayEnv, fault: Callable[[], None], size: int = 3 << 20
) -> tuple[list[str], str, str]:
    """One session: a large message with ``fault`` done after its first half MiB; the replies
    to DATA, NOOP and QUIT (and anything more), alice's recipient and evil."""
    alice, to, evil = env.user("alice"), _external("to"), _external("evil")
    client = await RawSMTP.login(HOST, env.port, alice, PASSWORD)
    try:
        await client.write(f"MAIL FROM:<{alice}>\r\nRCPT TO:<{to}>\r\nDATA\r\n".encode())
        assert [r[:3] for r in await client.replies(3)] == ["250", "250", "354"]
        text = _text(alice, to, evil, size)
        await client.write(text[:HALF], b"")
        fault()
        await client.write(text[HALF:] + b".\r\n")
        replies = [await client.reply(timeout=60)]
        await client.write(b"NOOP\r\nQUIT\r\n")
        replies += await client.replies(2)
        if leftover := await client.rest():
            replies.append(f"then: {leftover!r}")
    finally:
        await client.close()
    return replies, to, evil


async def _settled(postfix: Postfix, *addresses: str) -> list[int]:
    await asyncio.sleep(1.5)  # Postfix delivers within a fraction of a second here
    return [len(postfix.delivered(address)) for address in addresses]


async def test_spill_directory_removed_during_data_is_made_again(
    sqlite_cli: Cli, sqlite_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(
        sqlite_cli, sqlite_url, tmp_path, postfix, allow_plaintext_auth_on_loopback=True
    ) as env:
        spill = env.relay.spill_dir
        assert spill is not None and spill.is_dir()
        replies, to, evil = await _send_with_fault(env, lambda: shutil.rmtree(spill))
        assert replies[0].startswith("250 2.0.0 Ok") and [r[:3] for r in replies[1:]] == [
            "250",
            "221",
        ], replies
        assert spill.is_dir()
        assert await _settled(postfix, to, evil) == [1, 0]


async def test_spool_directory_turned_file_during_data_still_delivers(
    sqlite_cli: Cli, sqlite_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    """Relay first, capture second: the spill goes to the system temp dir, the capture copy to
    the database spool; the client gets the upstream's 250 once, and the copy is kept."""
    async with running(
        sqlite_cli,
        sqlite_url,
        tmp_path,
        postfix,
        worker=False,
        allow_plaintext_auth_on_loopback=True,
    ) as env:
        spool = spool_dir(env.config)

        def turn_into_file() -> None:
            shutil.rmtree(spool)
            spool.write_text("the disk refuses: a file where the spool directory was")

        replies, to, evil = await _send_with_fault(env, turn_into_file)
        assert replies[0].startswith("250 2.0.0 Ok") and [r[:3] for r in replies[1:]] == [
            "250",
            "221",
        ], replies
        assert await _settled(postfix, to, evil) == [1, 0]
        [entry] = env.spool_entries()  # the capture copy, in the database instead
        assert entry.delivered and entry.envelope_to == [to] and b"Subject: large" in entry.raw


@contextlib.contextmanager
def disk_refusing(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes in a file fail with EFBIG (RLIMIT_FSIZE binds root too;
    Python ignores SIGXFSZ). Only this process: Postfix and Dovecot are not affected."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


async def test_disk_refusing_the_spill_file_gets_one_451_and_no_commands_run(
    sqlite_cli: Cli, sqlite_url: str, tmp_path: Path, postfix: Postfix
) -> None:
    async with running(
        sqlite_cli, sqlite_url, tmp_path, postfix, allow_plaintext_auth_on_loopback=True
    ) as env:
        with disk_refusing(1536 * 1024):
            replies, to, evil = await _send_with_fault(env, lambda: None)
        assert replies[0].startswith("451 4.3.0") and [r[:3] for r in replies[1:]] == [
            "250",
            "221",
        ], replies
        assert await _settled(postfix, to, evil) == [0, 0]
        # the session to the upstream was ended cleanly: the next message goes through
        alice, other = env.user("alice"), _external("to")
        client = await RawSMTP.login(HOST, env.port, alice, PASSWORD)
        await client.write(f"MAIL FROM:<{alice}>\r\nRCPT TO:<{other}>\r\nDATA\r\n".encode())
        assert [r[:3] for r in await client.replies(3)] == ["250", "250", "354"]
        await client.write(b"Subject: after\r\n\r\nfine\r\n.\r\nQUIT\r\n")
        assert [r[:3] for r in await client.replies(2)] == ["250", "221"]
        await client.close()
        assert await _settled(postfix, other) == [1]


class _Refusing(MessageBuffer):
    """A buffer that fails on its third piece, with whatever error."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error, self.calls = error, 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self.calls += 1
        if self.calls == 3:
            raise self.error
        super().append(data)


class _Pieces:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def read(self, _size: int) -> bytes:
        return self.pieces.pop(0) if self.pieces else b""


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("bug")])
async def test_read_data_reads_to_the_end_after_the_buffer_fails(error: Exception) -> None:
    pieces = [
        b"Subject: x\r\n\r\n",
        b"line\r\n",
        b"RCPT TO:<evil@x>\r\n",
        b"QUIT\r\n",
        b"more\r\n.\r\nNOOP\r\n",
    ]
    result, rest = await read_data(_Pieces(pieces), _Refusing(error), None)  # type: ignore[arg-type]
    assert result is DataResult.FAILED and rest == b"NOOP\r\n"
