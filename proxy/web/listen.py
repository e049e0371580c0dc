"""How the web listener listens (issue 18): HTTPS with ``[http]`` cert_file/key_file or, with
``[http] tls = true`` alone, the relay's certificate; and no plain HTTP beyond loopback unless
``[http] trusted_proxy`` names the proxy that terminates TLS in front of it (passwords and session
cookies would otherwise cross the network in clear)."""

from __future__ import annotations

import ipaddress
import ssl

from crm.config import Config
from crm.errors import ConfigError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a listen address) is only reachable from this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name, "0.0.0.0", "": reachable from elsewhere


def _files(config: Config) -> tuple[str, str] | None:
    http, relay = config.http, config.relay
    if http.cert_file or http.key_file:
        if not (http.cert_file and http.key_file):
            raise ConfigError("config: [http] cert_file and key_file go together")
        return http.cert_file, http.key_file
    if http.tls:
        if not (relay.cert_file and relay.key_file):
            raise ConfigError(
                "config: [http] tls = true needs [http] cert_file/key_file or the relay's"
            )
        return relay.cert_file, relay.key_file
    return None


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The listener's TLS context, or None for plain HTTP; ConfigError for a plain listener
    beyond loopback without a trusted proxy, or for unreadable certificate files."""
    files = _files(config)
    if files is None:
        if not is_loopback(config.http.host) and not config.http.trusted_proxy:
            raise ConfigError(
                f"config: [http] host {config.http.host!r} is not loopback: set [http] tls "
                "(cert_file/key_file) or name the TLS-terminating proxy in [http] trusted_proxy"
            )
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(files[0], files[1])
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"config: [http] certificate {files[0]}: {err}") from err
    return context
