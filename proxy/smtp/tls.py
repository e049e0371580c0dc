"""TLS for the relay's listeners: the server context, and the self-signed pair writer.

``mailcrm tls selfsigned`` calls :func:`write_selfsigned`; the relay calls :func:`relay_context`,
which loads ``relay.cert_file``/``relay.key_file`` from the config or, when none are configured,
the pair in the data directory (written on first use, so a fresh gateway offers STARTTLS at once;
mail clients will ask the user to trust it, as with any self-signed certificate).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crm.config import RelayConfig, data_dir
from crm.errors import ConfigError

log = logging.getLogger("proxy.tls")  # its name before the move (issue 17)
MAX_CERT_FILE = 1024 * 1024  # a certificate chain is a few KB; read no more than this


def default_paths() -> tuple[Path, Path]:
    """Where ``mailcrm tls selfsigned`` writes by default: ``<data dir>/tls/relay.{crt,key}``."""
    base = data_dir() / "tls"
    return base / "relay.crt", base / "relay.key"


def _san(names: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _certificate(key: ec.EllipticCurvePrivateKey, names: list[str], days: int) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )


def write_selfsigned(
    cert_path: Path, key_path: Path, names: list[str], days: int = 825, force: bool = False
) -> None:
    """Write a self-signed EC P-256 certificate for ``names`` and its key (mode 0600)."""
    if not names:
        raise ConfigError("tls selfsigned: give at least one host name")
    if not force and (cert_path.exists() or key_path.exists()):
        raise ConfigError(f"{cert_path} or {key_path} exists already (use --force to replace)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(key, names, days)
    for path in (cert_path, key_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = key_path.with_name(key_path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    tmp.replace(key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def default_names(config: RelayConfig) -> list[str]:
    """Host names for a generated certificate: the relay's name, localhost and loopback."""
    names = [config.hostname or socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    if config.host not in ("0.0.0.0", "::", ""):
        names.append(config.host)
    return list(dict.fromkeys(names))


def certificate_name(cert_path: Path) -> str | None:
    """The host a certificate is for: its first SAN dNSName that is neither a wildcard nor
    ``localhost``, else its subject's CN (None when it names no host or cannot be read)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes()[:MAX_CERT_FILE])
    except (OSError, ValueError) as exc:
        log.debug("relay: no host name from %s: %s", cert_path, exc)
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = [str(n) for n in san.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns = []
    for name in dns:
        if "*" not in name and name.lower() != "localhost" and _hostname_like(name):
            return name
    for attribute in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        name = str(attribute.value)
        if _hostname_like(name):
            return name
    return None


def _hostname_like(name: str) -> bool:
    """A name fit for the SMTP banner: letters, digits, dots and hyphens, not an IP address."""
    try:
        ipaddress.ip_address(name)
        return False
    except ValueError:
        pass
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789.-")
    return 0 < len(name) <= 253 and set(name.lower()) <= allowed and "*" not in name


def relay_hostname(config: RelayConfig) -> str:
    """The name in the relay's banner and EHLO: ``relay.hostname``, else the name its
    certificate is for (the configured one, else the data directory's), else the machine's
    FQDN, else ``localhost``."""
    if config.hostname:
        return config.hostname
    cert_path = Path(config.cert_file) if config.cert_file else default_paths()[0]
    named = certificate_name(cert_path) if cert_path.exists() else None
    return named or socket.getfqdn("") or "localhost"


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context for a listener."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"relay: cannot load TLS certificate {cert_path}: {exc}") from exc
    return context


def relay_context(config: RelayConfig) -> ssl.SSLContext:
    """The listeners' context: the configured pair, else the data directory's (made if absent)."""
    if config.cert_file or config.key_file:
        if not (config.cert_file and config.key_file):
            raise ConfigError("relay: set both relay.cert_file and relay.key_file")
        return server_context(Path(config.cert_file), Path(config.key_file))
    cert_path, key_path = default_paths()
    if not cert_path.exists() or not key_path.exists():
        log.warning(
            "relay: no TLS certificate configured; writing a self-signed one to %s "
            "(set relay.cert_file and relay.key_file for a real one)",
            cert_path,
        )
        write_selfsigned(cert_path, key_path, default_names(config), force=True)
    return server_context(cert_path, key_path)
