"""Load for ``bench/relay.py``: SMTP clients that send 5 KB messages flat out or at a set rate.

Role: bench support. Every connection logs in once and sends in a loop (as a mail client with
a queue of outgoing mail does). :func:`load` sends as fast as the server answers (a closed loop:
it finds the throughput, and its latency is queueing time at saturation); :func:`paced` offers
a fixed total rate spread over the connections (an open loop below saturation: its latency is
what one message costs the sender, the figure "added latency" compares).
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import ssl
import time
from email.utils import formatdate

import aiosmtplib

HOST = "127.0.0.1"
PASSWORD = "bench password"


def body_of(size: int, seed: int) -> bytes:
    """Text lines of base64-looking data, about ``size`` bytes."""
    rng = random.Random(seed)
    line_count = max(1, size // 78)
    chunk = base64.b64encode(rng.randbytes(57 * 64))
    lines = [chunk[(i * 76) % (len(chunk) - 76) :][:76] for i in range(line_count)]
    return b"\r\n".join(lines) + b"\r\n"


def make_message(sender: str, to: str, subject: str, body: bytes) -> bytes:
    head = (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{os.urandom(12).hex()}@bench.example>\r\n"
        f"Date: {formatdate()}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    return head.encode() + body


async def connection(
    port: int,
    ca: ssl.SSLContext,
    user: str,
    seconds: float,
    size: int,
    seed: int,
    latencies: list[float],
    interval: float = 0.0,
) -> None:
    """One logged-in client; with ``interval`` it starts a message every ``interval`` s at most."""
    smtp = aiosmtplib.SMTP(hostname=HOST, port=port, start_tls=True, tls_context=ca, timeout=60)
    await smtp.connect()
    await smtp.login(user, PASSWORD)
    body = body_of(size, seed)
    if interval:
        await asyncio.sleep(random.Random(seed).uniform(0, interval))  # spread the starts
    deadline = time.monotonic() + seconds
    n = 0
    due = time.monotonic()
    while time.monotonic() < deadline:
        to = f"customer{seed}-{n % 25}@client-{seed}.example"
        raw = make_message(user, to, f"Bench {seed}/{n}", body)
        start = time.perf_counter()
        await smtp.sendmail(user, [to], raw)
        latencies.append(time.perf_counter() - start)
        n += 1
        if interval:
            due += interval
            await asyncio.sleep(max(0.0, due - time.monotonic()))
    await smtp.quit()


async def load(
    port: int, ca: ssl.SSLContext, users: list[str], seconds: float, size: int
) -> tuple[float, list[float]]:
    """Every connection flat out: messages/s and each message's send time."""
    return await paced(port, ca, users, seconds, size, rate=0.0)


async def paced(
    port: int, ca: ssl.SSLContext, users: list[str], seconds: float, size: int, rate: float
) -> tuple[float, list[float]]:
    """``rate`` messages/s in total over the connections (0: flat out)."""
    interval = len(users) / rate if rate else 0.0
    latencies: list[float] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(
            connection(port, ca, user, seconds, size, i, latencies, interval)
            for i, user in enumerate(users)
        )
    )
    return len(latencies) / (time.perf_counter() - start), latencies
