"""The failed-login throttle on its own (protocol-free): delays, refusal, expiry, bounded memory."""

from __future__ import annotations

from proxy.throttle import LoginThrottle, Verdict, client_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delays_grow_then_refusal_ends_and_success_forgives_the_login() -> None:
    clock = Clock()
    throttle = LoginThrottle(
        free=2, delay=1.0, max_delay=4.0, refuse_after=6, refuse_for=60, clock=clock
    )
    seen = []
    for _ in range(6):
        seen.append(throttle.check("192.0.2.1", "Ann"))
        throttle.failed("192.0.2.1", "Ann")
    assert [v.delay for v in seen] == [0, 0, 1, 2, 4, 4]
    refused = throttle.check("192.0.2.99", "ann ")  # the login, from anywhere
    assert refused.refused and refused.retry_after == 60
    assert throttle.check("192.0.2.1", "bob").refused  # the address, for any login
    assert throttle.check("192.0.2.2", "bob") == Verdict()  # others are untouched
    clock.now += 61
    assert throttle.check("192.0.2.1", "ann") == Verdict(delay=1.0)  # delays again, no refusal
    throttle.succeeded("192.0.2.1", "ann")
    assert throttle.check("192.0.2.3", "ann") == Verdict()
    clock.now += 900
    assert throttle.check("192.0.2.1", "zed") == Verdict()  # forgotten after forget_after


def test_memory_is_bounded_and_ipv6_counts_by_64() -> None:
    throttle = LoginThrottle(max_keys=100, clock=Clock())
    for i in range(10_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", f"user{i}")
    assert len(throttle) == 100
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9")
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7" and client_key(None) == "unknown"
