"""The private parts of aiosmtpd's ``SMTP`` the relay (:mod:`proxy.smtp.server`) relies on.

aiosmtpd is pinned below 1.5 in pyproject.toml for this reason; before raising the bound, this
test names what to check in the new version: each member must still exist and mean the same.
"""

from __future__ import annotations

import asyncio
import inspect

import pytest
from aiosmtpd.smtp import SMTP, Session

# Instance attributes set by SMTP.__init__ and what RelaySMTP does with them.
ATTRIBUTES = {
    "_handle_hooks": "RelaySMTP registers its PROXY hook in it (_handle_hooks['PROXY'])",
    "_proxy_timeout": "cleared when the PROXY header was read before TLS (proxied())",
    "_original_transport": "None until STARTTLS: tells the first connection_made from the next",
    "_auth_require_tls": "lifted on the implicit TLS port and for loopback-only paths",
}
# Methods RelaySMTP calls or overrides.
METHODS = {
    "_reset_timeout": "restarted while a DATA body streams in (read_data)",
    "_set_post_data_state": "called after the relay's own DATA, as aiosmtpd's smtp_DATA does",
    "_call_handler_hook": "dispatches the PROXY hook through _handle_hooks",
    "check_helo_needed": "the relay's smtp_DATA keeps aiosmtpd's checks",
    "check_auth_needed": "the relay's smtp_DATA keeps aiosmtpd's checks",
    "smtp_AUTH": "overridden, calls super()",
    "smtp_MAIL": "overridden, calls super()",
    "smtp_DATA": "replaced: streams the body to a buffer instead of memory",
}


class _Handler:
    pass


@pytest.mark.parametrize("name", sorted(ATTRIBUTES))
async def test_smtp_instance_attribute_exists(name: str) -> None:
    assert hasattr(SMTP(_Handler(), proxy_protocol_timeout=3), name), ATTRIBUTES[name]


def test_the_proxy_hook_goes_through_handle_hooks() -> None:
    assert "_handle_hooks" in inspect.getsource(SMTP._call_handler_hook)
    assert isinstance(SMTP(_Handler())._handle_hooks, dict)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_smtp_method_exists(name: str) -> None:
    assert callable(getattr(SMTP, name, None)), METHODS[name]
    if name == "_reset_timeout":
        assert list(inspect.signature(SMTP._reset_timeout).parameters) == ["self", "duration"]


def test_the_stream_reader_is_a_private_attribute_with_a_bytearray_buffer() -> None:
    """smtp_DATA reads the body from ``self._reader`` (set in connection_made) and gives bytes
    pipelined after the dot back through ``StreamReader._buffer``."""
    assert "self._reader" in inspect.getsource(SMTP.connection_made)
    assert isinstance(asyncio.StreamReader()._buffer, bytearray)  # type: ignore[attr-defined]


async def test_session_fields_the_relay_reads_and_sets() -> None:
    session = Session(asyncio.get_running_loop())
    for name in ("peer", "proxy_data", "authenticated", "auth_data"):
        assert hasattr(session, name)
