"""Real Dovecot (IMAP + LMTP) and Postfix (SMTP submission) servers for integration tests.

Role: test infrastructure. Each :class:`Dovecot` / :class:`Postfix` instance runs the Debian
packaged daemons (``dovecot-core``, ``dovecot-imapd``, ``dovecot-lmtpd``, ``postfix``; see
``scripts/install-servers.sh``) with a private configuration written into a fresh temporary
directory. Everything an instance uses is private to it: TCP ports (free ones picked at run
time, 127.0.0.1 only), Dovecot's ``base_dir``/``state_dir``, Postfix's config, queue and data
directories, pid files, logs, TLS certificates and mail storage. Several test runs can
therefore run side by side on one machine, and the packaged system daemons are never touched.

* :class:`Dovecot` -- IMAP (plain + STARTTLS) and IMAPS on loopback; users in per-user
  files read afresh at each login (``add_user`` takes effect at once, also while running);
  Maildir storage owned by one system user; INBOX plus a ``Sent`` folder flagged
  ``\\Sent``; an auth socket for Postfix SASL and an LMTP socket.
* :class:`Postfix` -- a submission-style smtpd (STARTTLS, SASL AUTH through Dovecot,
  ``permit_sasl_authenticated, reject``) delivering the test domain into Dovecot over LMTP,
  refusing unknown local recipients at RCPT time (550 5.1.1) and capturing mail for every
  other domain in per-recipient Maildirs under ``capture_dir`` instead of sending it out.
* Session-scoped pytest fixtures ``dovecot`` and ``postfix``: a conftest can do
  ``from tests.servers import dovecot, postfix``. They skip when the binaries are missing or
  when not running as root (Postfix can only be started by root).

Both servers need root: they drop privileges to their usual system users (``dovecot``,
``dovenull``, ``postfix``) and the mail storage belongs to the ``mail`` user.
Set ``MAILCRM_KEEP_SERVERS=1`` to keep the temporary directories (configs, logs, mail) after
the run for debugging.

PYTEST_DONT_REWRITE -- this module has no asserts; the marker keeps pytest from warning when
it is loaded as a plugin after a conftest already imported it.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import itertools
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "Dovecot",
    "Postfix",
    "ServerError",
    "dovecot",
    "postfix",
    "servers_available",
]

HOST = "127.0.0.1"
DEFAULT_DOMAIN = "example.test"

DOVECOT_BIN = "/usr/sbin/dovecot"
DOVECOT_LMTP_BIN = "/usr/lib/dovecot/lmtp"
DOVECOT_IMAP_BIN = "/usr/lib/dovecot/imap"
POSTFIX_BIN = "/usr/sbin/postfix"
POSTMAP_BIN = "/usr/sbin/postmap"
POSTCONF_BIN = "/usr/sbin/postconf"
POSTQUEUE_BIN = "/usr/sbin/postqueue"

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0
_START_ATTEMPTS = 4


class ServerError(RuntimeError):
    """A test server failed to start, stop or deliver in time."""


# --------------------------------------------------------------------------- helpers


def servers_available() -> str | None:
    """Return None when the servers can run here, else the reason why they cannot."""
    if os.geteuid() != 0:
        return "Dovecot/Postfix test servers need root (Postfix can only be started by root)"
    missing = [
        path
        for path in (DOVECOT_BIN, DOVECOT_IMAP_BIN, DOVECOT_LMTP_BIN, POSTFIX_BIN, POSTMAP_BIN)
        if not os.access(path, os.X_OK)
    ]
    if missing:
        return (
            "Dovecot/Postfix binaries missing: "
            + ", ".join(missing)
            + " (run scripts/install-servers.sh as root)"
        )
    return None


def _keep_default() -> bool:
    return os.environ.get("MAILCRM_KEEP_SERVERS", "") not in ("", "0")


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers retry on a clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = _free_port()
        if port not in ports:
            ports.append(port)
    return ports


def _mail_owner() -> tuple[int, int]:
    """uid/gid owning all Maildirs: Debian's ``mail`` user, else ``nobody``."""
    for name in ("mail", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise ServerError("neither a 'mail' nor a 'nobody' user exists")


def _pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # Format: "pid (comm) state ..."; comm may contain spaces or parentheses.
    state = stat.rsplit(")", 1)[1].split()[0]
    return state not in ("Z", "X")


def _pid_cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return not _pid_alive(pid)


def _terminate(pid: int, expect_in_cmdline: str, timeout: float = _STOP_TIMEOUT) -> None:
    """SIGTERM (then SIGKILL) one process we started, identified by its pid file."""
    if not _pid_alive(pid) or expect_in_cmdline not in _pid_cmdline(pid):
        return  # gone, or the pid was reused by something that is not ours
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 15)
    if not _wait_pid_gone(pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
        _wait_pid_gone(pid, 5.0)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _run(cmd: list[str], log: Path, *, env: dict[str, str] | None = None) -> int:
    """Run a command with stdout/stderr appended to ``log``.

    Output goes to a file, not a pipe: the daemons inherit the descriptors and a pipe
    would never reach EOF while they run.
    """
    with log.open("ab") as out:
        out.write(("$ " + " ".join(cmd) + "\n").encode())
        out.flush()
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            check=False,
            timeout=120,
        )
    return proc.returncode


def _make_cert(directory: Path, common_name: str, hostnames: list[str]) -> tuple[Path, Path]:
    """Write a self-signed EC certificate + key; the certificate doubles as its own CA.

    It is valid for ``localhost``, 127.0.0.1 and ``hostnames``; clients trust it with
    ``ssl.create_default_context(cafile=cert_path)``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    san: list[x509.GeneralName] = [x509.DNSName("localhost")]
    san += [x509.DNSName(h) for h in hostnames]
    san.append(x509.IPAddress(ipaddress.IPv4Address(HOST)))
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.chmod(0o644)
    key_path.chmod(0o600)  # read by the daemons' master processes, which run as root
    return cert_path, key_path


def _client_context(cafile: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cafile))


def _await_banner(
    port: int,
    token: bytes,
    deadline: float,
    *,
    tls: ssl.SSLContext | None = None,
    alive: Callable[[], bool] = lambda: True,
) -> None:
    """Wait until ``port`` greets with a banner containing ``token`` (proves it is ours)."""
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            raise ServerError(f"server died before port {port} answered ({last_error})")
        try:
            with socket.create_connection((HOST, port), timeout=2.0) as raw:
                sock: socket.socket = raw
                if tls is not None:
                    sock = tls.wrap_socket(raw, server_hostname=HOST)
                sock.settimeout(2.0)
                banner = b""
                while b"\n" not in banner:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    banner += chunk
                if token in banner:
                    return
                last_error = f"foreign banner {banner[:120]!r}"
                # Someone else owns this port: fail fast so the caller can retry.
                raise ServerError(f"port {port} is answered by another server: {last_error}")
        except (OSError, ssl.SSLError) as exc:
            last_error = repr(exc)
        time.sleep(0.05)
    raise ServerError(f"port {port} did not greet with {token!r} in time ({last_error})")


def _await_path(path: Path, deadline: float, alive: Callable[[], bool]) -> None:
    while time.monotonic() < deadline:
        if path.exists():
            return
        if not alive():
            raise ServerError(f"server died before {path} appeared")
        time.sleep(0.05)
    raise ServerError(f"{path} did not appear in time")


def _chown_tree_parts(root: Path, target: Path, uid: int, gid: int, mode: int = 0o700) -> None:
    """``mkdir -p target`` below ``root``, giving every directory it creates to uid/gid."""
    missing: list[Path] = []
    current = target
    while current != root and not current.exists():
        missing.append(current)
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir(mode=mode)
            os.chown(directory, uid, gid)


def _read_maildir(maildir: Path) -> list[bytes]:
    """Messages of one Maildir folder (new/ and cur/), oldest first."""
    for _attempt in range(10):
        entries: dict[str, Path] = {}
        for sub in ("cur", "new"):
            directory = maildir / sub
            if not directory.is_dir():
                continue
            for path in directory.iterdir():
                if not path.name.startswith("."):
                    entries.setdefault(path.name.split(":", 1)[0], path)
        try:
            stamped = sorted(
                ((path.stat().st_mtime_ns, path.name, path) for path in entries.values()),
            )
            return [path.read_bytes() for _, _, path in stamped]
        except FileNotFoundError:
            # Dovecot moved a file from new/ to cur/ (or renamed its flags) meanwhile.
            time.sleep(0.02)
    raise ServerError(f"{maildir} keeps changing while being read")


def _write_settled(path: Path, text: str) -> None:
    """Write a Postfix input file with an mtime in the past.

    Postfix commands re-read a main.cf (or map source) whose mtime is within the last
    second, sleeping 300ms each time, until it looks settled: backdating saves seconds.
    """
    path.write_text(text)
    past = time.time() - 60
    os.utime(path, (past, past))


def _cleanup_dir(path: Path, keep: bool) -> None:
    if keep:
        return
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- Dovecot

# Dovecot 2.3 syntax (Debian 12 ships 2.3.19). Dovecot 2.4 changed the configuration format
# substantially (mandatory dovecot_config_version/dovecot_storage_version, named passdb/userdb
# blocks, ssl_server_cert_file instead of ssl_cert, mail_driver/mail_path instead of
# mail_location, %{user} variables instead of %u, ...): this template needs porting for 2.4.
_DOVECOT_CONF = """\
# Private Dovecot {version} instance for tests ({token}); written by tests/servers.py.
# Dovecot 2.3 syntax; Dovecot 2.4 uses a different format.
instance_name = {instance}
base_dir = {run}
state_dir = {state}
log_path = {log}
info_log_path = {log}
debug_log_path = {log}
protocols = imap lmtp
listen = {host}
shutdown_clients = yes
login_greeting = {token} ready.

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
{ssl_dh}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_username_format = %Lu
auth_default_realm = {domain}
auth_failure_delay = 0
auth_verbose = yes
auth_cache_size = 0

first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:~/Maildir
mail_max_userip_connections = 1000

# Users: one JSON file per user and kind under {auth_dir} (dict fs:posix), read afresh at
# every lookup. (A passwd-file is re-read on change too, but Dovecot stats it at most once
# per second, so a user added right after a lookup could stay invisible for up to 1s.)
passdb {{
  driver = dict
  args = {dict_conf}
}}
userdb {{
  driver = dict
  args = {dict_conf}
  default_fields = uid={uid} gid={gid} home={mail}/%Lu
}}

namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
}}

protocol imap {{
  mail_max_userip_connections = 1000
  imap_idle_notify_interval = 1 mins
}}
protocol lmtp {{
  postmaster_address = postmaster@{domain}
}}

service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
# No auth penalty: after failed logins from an IP, anvil makes the next ones wait 2, 4, 8,
# 15s, which would make tests that try wrong passwords slow down the rest of the session.
# mode = 0 drops the listener; the auth process then runs without penalties.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""


# Dovecot's default auth_username_chars (user names with other characters are refused).
_USERNAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@")

_DOVECOT_DICT_CONF = """\
# passdb/userdb dict for tests/servers.py: {auth_dir}/passdb/<user>, {auth_dir}/userdb/<user>.
# auth_username_chars (default) keeps "/" out of user names, hence out of these paths.
uri = fs:posix:prefix={auth_dir}/
default_pass_scheme = PLAIN
iterate_disable = yes
key passdb {{
  key = passdb/%u
  format = json
}}
key userdb {{
  key = userdb/%u
  format = json
}}
passdb_objects = passdb
userdb_objects = userdb
"""


class Dovecot:
    """A private Dovecot 2.3 instance on 127.0.0.1 (IMAP, IMAPS, LMTP + auth sockets).

    Users log in as ``name@domain`` (or just ``name``: ``auth_default_realm`` adds the
    domain). All mailboxes are Maildirs under :attr:`base_dir` owned by the ``mail`` user.
    ``extra_config`` is appended to the generated dovecot.conf (e.g. raised process and client
    limits for a benchmark; a repeated ``service`` block extends the one above).
    """

    host: str = HOST

    def __init__(
        self, domain: str = DEFAULT_DOMAIN, *, keep: bool | None = None, extra_config: str = ""
    ) -> None:
        self.domain = domain.lower()
        self.extra_config = extra_config
        self.keep = _keep_default() if keep is None else keep
        self.token = f"mailcrm-dovecot-{uuid.uuid4().hex[:12]}"
        self.base_dir = Path(tempfile.mkdtemp(prefix="mailcrm-dovecot-"))
        self.base_dir.chmod(0o755)  # dovecot/dovenull/postfix must traverse it
        self.uid, self.gid = _mail_owner()
        self.config_path = self.base_dir / "dovecot.conf"
        self.run_dir = self.base_dir / "run"
        self.state_dir = self.base_dir / "state"
        self.mail_dir = self.base_dir / "mail"
        self.auth_dir = self.base_dir / "auth"
        self.dict_conf_path = self.base_dir / "auth-dict.conf.ext"
        self.log_path = self.base_dir / "dovecot.log"
        self.command_log_path = self.base_dir / "commands.log"
        self.lmtp_socket = self.run_dir / "lmtp"
        self.auth_socket = self.run_dir / "auth-postfix"
        self.pid_file = self.run_dir / "master.pid"
        self.cert_path, self.key_path = _make_cert(
            self.base_dir, "mailcrm test IMAP", [f"imap.{self.domain}"]
        )
        self.imap_port = 0
        self.imaps_port = 0
        self.users: dict[str, str] = {}
        self._pid: int | None = None
        self._user_listeners: list[Callable[[list[str]], None]] = []
        self._seq = itertools.count()
        self.mail_dir.mkdir(mode=0o750)
        os.chown(self.mail_dir, self.uid, self.gid)
        for kind in ("passdb", "userdb"):
            (self.auth_dir / kind).mkdir(parents=True, mode=0o755)

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.cleanup()

    @property
    def running(self) -> bool:
        return self._pid is not None and _pid_alive(self._pid)

    def start(self) -> None:
        """Write the config and start ``dovecot -c``; retries with new ports on a clash."""
        if self.running:
            return
        errors: list[str] = []
        for _attempt in range(_START_ATTEMPTS):
            self.imap_port, self.imaps_port = _free_ports(2)
            self._write_config()
            try:
                self._start_once()
            except ServerError as exc:
                errors.append(str(exc))
                self.stop()
                continue
            except BaseException:
                self.stop()
                raise
            atexit.register(self._at_exit)
            return
        self.stop()
        raise ServerError(
            "Dovecot did not start:\n"
            + "\n".join(errors)
            + f"\n--- {self.log_path}\n{_tail(self.log_path)}"
            + f"\n--- {self.command_log_path}\n{_tail(self.command_log_path)}"
        )

    def _start_once(self) -> None:
        self.pid_file.unlink(missing_ok=True)  # left by a failed attempt; ours comes anew
        rc = _run([DOVECOT_BIN, "-c", str(self.config_path)], self.command_log_path)
        if rc != 0:
            raise ServerError(f"dovecot -c exited with {rc}")
        deadline = time.monotonic() + _START_TIMEOUT
        while self._pid is None:
            self._pid = _read_pid(self.pid_file)
            if self._pid is None:
                if time.monotonic() > deadline:
                    raise ServerError(f"{self.pid_file} did not appear")
                time.sleep(0.02)

        def alive() -> bool:
            return self.running

        _await_banner(self.imap_port, self.token.encode(), deadline, alive=alive)
        _await_banner(
            self.imaps_port,
            self.token.encode(),
            deadline,
            tls=self.ssl_context(),
            alive=alive,
        )
        _await_path(self.lmtp_socket, deadline, alive)
        _await_path(self.auth_socket, deadline, alive)

    def stop(self) -> None:
        """Stop the master process recorded in this instance's pid file (and its children)."""
        pid = self._pid or _read_pid(self.pid_file)
        self._pid = None
        atexit.unregister(self._at_exit)
        if pid is not None:
            _terminate(pid, "dovecot")

    def cleanup(self) -> None:
        """Remove the temporary directory (unless ``keep``); call after :meth:`stop`."""
        if not self.running:
            _cleanup_dir(self.base_dir, self.keep)

    def _at_exit(self) -> None:
        # Still running when the interpreter exits (no context manager exit, e.g. Ctrl-C).
        self.stop()
        self.cleanup()

    # ---------------------------------------------------------------- config

    def _write_config(self) -> None:
        dh = Path("/usr/share/dovecot/dh.pem")
        text = _DOVECOT_CONF.format(
            version="2.3",
            token=self.token,
            instance=self.token,
            run=self.run_dir,
            state=self.state_dir,
            log=self.log_path,
            host=self.host,
            cert=self.cert_path,
            key=self.key_path,
            ssl_dh=f"ssl_dh = <{dh}" if dh.exists() else "",
            domain=self.domain,
            uid=self.uid,
            gid=self.gid,
            auth_dir=self.auth_dir,
            dict_conf=self.dict_conf_path,
            mail=self.mail_dir,
            imap_port=self.imap_port,
            imaps_port=self.imaps_port,
        )
        self.config_path.write_text(text + self.extra_config)
        self.config_path.chmod(0o644)
        self.dict_conf_path.write_text(_DOVECOT_DICT_CONF.format(auth_dir=self.auth_dir))
        self.dict_conf_path.chmod(0o644)

    def _write_user(self, addr: str, password: str) -> None:
        # userdb first: a user becomes able to log in only once both files exist.
        for kind, record in (
            ("userdb", {}),
            ("passdb", {"password": "{PLAIN}" + password}),
        ):
            path = self.auth_dir / kind / addr
            tmp = path.with_name(f".{addr}.tmp")
            tmp.write_text(json.dumps(record))
            tmp.chmod(0o644)  # read by the auth process (user "dovecot")
            tmp.replace(path)

    # ---------------------------------------------------------------- users & mail

    def address(self, user: str) -> str:
        """``alice`` -> ``alice@<domain>``; full addresses stay as they are (lower-cased)."""
        user = user.strip().lower()
        return user if "@" in user else f"{user}@{self.domain}"

    def add_user(self, name: str, password: str) -> str:
        """Create (or re-password) a user; usable for IMAP, SMTP AUTH and LMTP on return.

        Returns the full address (``name@domain``), which is also the login name.
        """
        return self.add_users({name: password})[0]

    def add_users(self, users: Mapping[str, str]) -> list[str]:
        """Create (or re-password) several users at once; returns their addresses.

        Takes effect immediately, also while the server runs: Dovecot reads the user
        records afresh at every authentication and LMTP lookup.
        """
        addrs: list[str] = []
        for name, password in users.items():
            addr = self.address(name)
            local, _, domain = addr.partition("@")
            if not local or not domain or set(addr) - _USERNAME_CHARS:
                raise ValueError(f"unsupported user name {name!r}")
            self._write_user(addr, password)
            self.users[addr] = password
            addrs.append(addr)
        for listener in list(self._user_listeners):
            listener(addrs)
        return addrs

    def on_user_added(self, listener: Callable[[list[str]], None]) -> None:
        """Call ``listener(addresses)`` after every :meth:`add_users` (used by Postfix)."""
        self._user_listeners.append(listener)

    def remove_listener(self, listener: Callable[[list[str]], None]) -> None:
        with contextlib.suppress(ValueError):
            self._user_listeners.remove(listener)

    def home_for(self, user: str) -> Path:
        return self.mail_dir / self.address(user)

    def maildir_for(self, user: str, folder: str = "INBOX") -> Path:
        """Path of the user's Maildir (Maildir++ layout; ``folder`` selects a subfolder)."""
        root = self.home_for(user) / "Maildir"
        if folder.upper() == "INBOX":
            return root
        parts = [p for p in folder.split("/") if p]
        if not parts or any(p.startswith(".") or "." in p for p in parts):
            raise ValueError(f"unsupported folder name {folder!r}")
        return root / ("." + ".".join(parts))

    def _ensure_maildir(self, user: str, folder: str) -> Path:
        root = self.maildir_for(user)
        target = self.maildir_for(user, folder)
        for sub in ("cur", "new", "tmp"):
            _chown_tree_parts(self.mail_dir, target / sub, self.uid, self.gid)
        if target != root:
            for sub in ("cur", "new", "tmp"):
                _chown_tree_parts(self.mail_dir, root / sub, self.uid, self.gid)
            marker = target / "maildirfolder"
            if not marker.exists():
                marker.touch(mode=0o600)
                os.chown(marker, self.uid, self.gid)
        return target

    def deliver(
        self,
        user: str,
        raw: bytes,
        folder: str = "INBOX",
        seen: bool = False,
        mtime: float | None = None,
    ) -> Path:
        """Drop ``raw`` straight into the user's Maildir (fast bulk setup, no SMTP/LMTP).

        The folder is created if needed. Dovecot picks the file up at its next sync (and may
        move it from ``new`` to ``cur`` at once: ``mtime``, Dovecot's INTERNALDATE, is set before
        the file is visible). Returns the path of the message file.
        """
        if self.address(user) not in self.users:
            raise KeyError(f"unknown user {user!r}; call add_user() first")
        maildir = self._ensure_maildir(user, folder)
        now = time.time()
        unique = (
            f"{int(now)}.M{int((now % 1) * 1_000_000)}P{os.getpid()}"
            f"Q{next(self._seq)}.{socket.gethostname()}"
        )
        unique += f",S={len(raw)}"
        tmp = maildir / "tmp" / unique
        with tmp.open("xb") as fh:
            fh.write(raw)
        os.chown(tmp, self.uid, self.gid)
        tmp.chmod(0o600)
        if mtime is not None:
            os.utime(tmp, (mtime, mtime))
        dest = maildir / "cur" / f"{unique}:2,S" if seen else maildir / "new" / unique
        tmp.rename(dest)
        return dest

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """Raw messages currently in one folder of the user's Maildir, oldest first."""
        return _read_maildir(self.maildir_for(user, folder))

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this instance's certificate."""
        return _client_context(self.cert_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __repr__(self) -> str:
        return (
            f"<Dovecot {self.host} imap={self.imap_port} imaps={self.imaps_port} "
            f"dir={self.base_dir}>"
        )


# --------------------------------------------------------------------------- Postfix

_POSTFIX_MAIN_CF = """\
# Private Postfix instance for tests ({token}); written by tests/servers.py.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
meta_directory = {meta}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {log}
maillog_file_prefixes = {base}
syslog_name = {token}

myhostname = smtp.{domain}
mydomain = {domain}
myorigin = $myhostname
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled
alias_maps =
alias_database =
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = {host}/32
relayhost =
relay_domains =
smtp_dns_support_level = disabled
biff = no
append_dot_mydomain = no
readme_directory = no
smtputf8_enable = yes
message_size_limit = {size_limit}
mailbox_size_limit = 0
virtual_mailbox_limit = 0
delay_warning_time = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
maximal_queue_lifetime = 1h
bounce_queue_lifetime = 1h
in_flow_delay = 0

# The test domain: only listed users exist. They get their mail from Dovecot's LMTP
# ("lmtp:unix:..."), or with local_delivery="virtual" from Postfix's virtual(8) agent
# writing straight into the same Maildirs (Dovecot 2.3's LMTP lacks SMTPUTF8, so Postfix
# bounces SMTPUTF8 mail with 5.6.7 on the LMTP route).
virtual_mailbox_domains = {domain}
virtual_mailbox_maps = hash:{vmailbox}
virtual_alias_maps =
virtual_transport = {virtual_transport}
virtual_mailbox_base = {mail}
virtual_uid_maps = static:{mail_uid}
virtual_gid_maps = static:{mail_gid}
virtual_minimum_uid = {mail_uid}
lmtp_tls_security_level = none

# Every other domain goes to the capture transport (Maildirs under {capture}).
default_transport = capture
relay_transport = capture
capture_destination_recipient_limit = 1

# Submission-style smtpd: STARTTLS, SASL through Dovecot, authenticated clients only.
smtpd_banner = $myhostname ESMTP {token}
smtpd_tls_security_level = may
smtpd_tls_chain_files = {key}, {cert}
smtpd_tls_auth_only = {tls_auth_only}
smtpd_tls_received_header = yes
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {auth}
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
smtpd_sasl_authenticated_header = yes
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions =
smtpd_reject_unlisted_recipient = yes
smtpd_reject_unlisted_sender = no
unknown_virtual_mailbox_reject_code = 550
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
"""

_POSTFIX_MASTER_CF = """\
# Private Postfix instance for tests ({token}); nothing is chrooted.
# service type  private unpriv  chroot  wakeup  maxproc command + args
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
capture   unix  -       n       n       -       -       pipe
  flags=DRX user={capture_user} argv=/bin/sh {capture_script} {capture} ${{recipient}}
"""


# The "capture" pipe(8) transport: one Maildir per (lower-cased) envelope recipient.
_CAPTURE_SCRIPT = """\
#!/bin/sh
# Postfix capture transport (tests/servers.py): $1 = capture dir, $2 = recipient.
# Stores the message from stdin in $1/<recipient>/new/. Exit 75 = try again later.
rcpt=$(printf '%s' "$2" | tr 'A-Z/' 'a-z_')
case "$rcpt" in ''|.*) rcpt="_$rcpt" ;; esac
dir="$1/$rcpt"
mkdir -p "$dir/tmp" "$dir/new" "$dir/cur" || exit 75
name="$(date +%s).M$(date +%N)P$$.capture"
cat > "$dir/tmp/$name" || exit 75
mv "$dir/tmp/$name" "$dir/new/$name" || exit 75
"""


class Postfix:
    """A private Postfix instance on 127.0.0.1 in front of a :class:`Dovecot` instance.

    Submission-style: clients must STARTTLS (unless ``tls_auth_only=False``) and AUTH
    (PLAIN/LOGIN, checked by Dovecot) before they may send anything. Mail for
    ``dovecot.domain`` is delivered to Dovecot over LMTP; unknown users there are refused
    at RCPT time with 550 5.1.1. Mail for any other domain lands in
    ``capture_dir/<address>/`` (one Maildir per envelope recipient).

    Dovecot 2.3's LMTP does not offer SMTPUTF8, so Postfix bounces (5.6.7) mail that was
    sent with SMTPUTF8 *and* has UTF-8 in its envelope or headers to local users, as a real
    Postfix + Dovecot 2.3 pair would. ``local_delivery="virtual"`` delivers local mail with
    Postfix's own virtual(8) agent into the same Maildirs instead, which accepts it.

    Users come from the Dovecot instance (``add_user`` here or there); each change rebuilds
    the recipient table, which smtpd processes pick up before their next connection (an
    SMTP session that is already open keeps the table it started with).
    """

    host: str = HOST

    def __init__(
        self,
        dovecot: Dovecot,
        *,
        message_size_limit: int = 10 * 1024 * 1024,
        tls_auth_only: bool = True,
        local_delivery: Literal["lmtp", "virtual"] = "lmtp",
        keep: bool | None = None,
    ) -> None:
        if local_delivery not in ("lmtp", "virtual"):
            raise ValueError(f"local_delivery must be 'lmtp' or 'virtual', not {local_delivery!r}")
        self.dovecot = dovecot
        self.local_delivery = local_delivery
        self.domain = dovecot.domain
        self.message_size_limit = message_size_limit
        self.tls_auth_only = tls_auth_only
        self.keep = _keep_default() if keep is None else keep
        self.token = f"mailcrm-postfix-{uuid.uuid4().hex[:12]}"
        self.base_dir = Path(tempfile.mkdtemp(prefix="mailcrm-postfix-"))
        self.base_dir.chmod(0o755)
        self.config_dir = self.base_dir / "conf"
        self.queue_dir = self.base_dir / "queue"
        self.data_dir = self.base_dir / "data"
        self.capture_dir = self.base_dir / "capture"
        self.log_path = self.base_dir / "postfix.log"
        self.command_log_path = self.base_dir / "commands.log"
        self.vmailbox_path = self.config_dir / "vmailbox"
        self.pid_file = self.queue_dir / "pid" / "master.pid"
        for directory in (self.config_dir, self.queue_dir, self.data_dir, self.capture_dir):
            directory.mkdir(mode=0o755)
        postfix_user = pwd.getpwnam("postfix")
        os.chown(self.data_dir, postfix_user.pw_uid, postfix_user.pw_gid)
        self.data_dir.chmod(0o700)
        self.capture_uid, self.capture_gid = _mail_owner()
        os.chown(self.capture_dir, self.capture_uid, self.capture_gid)
        self.cert_path, self.key_path = _make_cert(
            self.base_dir, "mailcrm test SMTP", [f"smtp.{self.domain}"]
        )
        self.port = 0
        self._pid: int | None = None
        self._subscribed = False

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.cleanup()

    @property
    def running(self) -> bool:
        return self._pid is not None and _pid_alive(self._pid)

    def _postfix(self, *args: str) -> int:
        return _run([POSTFIX_BIN, "-c", str(self.config_dir), *args], self.command_log_path)

    def start(self) -> None:
        """Write main.cf/master.cf and run ``postfix -c DIR start``; retries on port clashes."""
        if self.running:
            return
        if not self.dovecot.running:
            raise ServerError("start the Dovecot instance before Postfix")
        if not self._subscribed:
            self.dovecot.on_user_added(self._user_added)
            self._subscribed = True
        errors: list[str] = []
        for _attempt in range(_START_ATTEMPTS):
            self.port = _free_port()
            self._write_config()
            self._write_vmailbox()
            try:
                self._start_once()
            except ServerError as exc:
                errors.append(str(exc))
                self._halt()
                continue
            except BaseException:
                self.stop()
                raise
            atexit.register(self._at_exit)
            return
        self.stop()
        raise ServerError(
            "Postfix did not start:\n"
            + "\n".join(errors)
            + f"\n--- {self.log_path}\n{_tail(self.log_path)}"
            + f"\n--- {self.command_log_path}\n{_tail(self.command_log_path)}"
        )

    def _start_once(self) -> None:
        # "start" runs Postfix's own checks and creates the queue directories.
        self.pid_file.unlink(missing_ok=True)
        rc = self._postfix("start")
        self._pid = _read_pid(self.pid_file)
        if rc != 0 or self._pid is None:
            raise ServerError(f"postfix start exited with {rc}")

        def alive() -> bool:
            return self.running

        deadline = time.monotonic() + _START_TIMEOUT
        _await_banner(self.port, self.token.encode(), deadline, alive=alive)

    def stop(self) -> None:
        """``postfix -c DIR stop`` for this instance only; waits until its master is gone."""
        if self._subscribed:
            self.dovecot.remove_listener(self._user_added)
            self._subscribed = False
        self._halt()

    def _halt(self) -> None:
        pid = self._pid or _read_pid(self.pid_file)
        self._pid = None
        atexit.unregister(self._at_exit)
        if pid is None or not _pid_alive(pid):
            return
        self._postfix("stop")
        if not _wait_pid_gone(pid, _STOP_TIMEOUT):
            _terminate(pid, "master")

    def cleanup(self) -> None:
        """Remove the temporary directory (unless ``keep``); call after :meth:`stop`."""
        if not self.running:
            _cleanup_dir(self.base_dir, self.keep)

    def _at_exit(self) -> None:
        # Still running when the interpreter exits (no context manager exit, e.g. Ctrl-C).
        self.stop()
        self.cleanup()

    # ---------------------------------------------------------------- config

    def _write_config(self) -> None:
        meta = (
            subprocess.run(
                [POSTCONF_BIN, "-dh", "meta_directory"],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            ).stdout.strip()
            or "/etc/postfix"
        )
        values = {
            "token": self.token,
            "queue": self.queue_dir,
            "data": self.data_dir,
            "meta": meta,
            "log": self.log_path,
            "base": self.base_dir,
            "domain": self.domain,
            "host": self.host,
            "port": self.port,
            "size_limit": self.message_size_limit,
            "vmailbox": self.vmailbox_path,
            "virtual_transport": (
                f"lmtp:unix:{self.dovecot.lmtp_socket}"
                if self.local_delivery == "lmtp"
                else "virtual"
            ),
            "mail": self.dovecot.mail_dir,
            "mail_uid": self.dovecot.uid,
            "mail_gid": self.dovecot.gid,
            "auth": self.dovecot.auth_socket,
            "capture": self.capture_dir,
            "capture_script": self.config_dir / "capture.sh",
            "capture_user": pwd.getpwuid(self.capture_uid).pw_name,
            "cert": self.cert_path,
            "key": self.key_path,
            "tls_auth_only": "yes" if self.tls_auth_only else "no",
        }
        _write_settled(self.config_dir / "main.cf", _POSTFIX_MAIN_CF.format(**values))
        _write_settled(self.config_dir / "master.cf", _POSTFIX_MASTER_CF.format(**values))
        _write_settled(self.config_dir / "capture.sh", _CAPTURE_SCRIPT)
        (self.config_dir / "capture.sh").chmod(0o755)

    def _write_vmailbox(self) -> None:
        """(Re)build the hash map of valid test-domain recipients from Dovecot's users.

        The new .db replaces the old file by rename: running smtpd processes notice that
        the table changed before they accept their next connection and restart.
        """
        tmp = self.config_dir / "vmailbox.next"
        _write_settled(
            tmp, "".join(f"{addr} {addr}/Maildir/\n" for addr in sorted(self.dovecot.users))
        )
        log = self.command_log_path
        if _run([POSTMAP_BIN, "-c", str(self.config_dir), f"hash:{tmp}"], log) != 0:
            raise ServerError(f"postmap failed, see {log}")
        Path(f"{tmp}.db").replace(f"{self.vmailbox_path}.db")
        tmp.replace(self.vmailbox_path)

    def _user_added(self, _addresses: list[str]) -> None:
        self._write_vmailbox()

    # ---------------------------------------------------------------- users & mail

    def add_user(self, name: str, password: str) -> str:
        """Shortcut for ``dovecot.add_user``: the user can AUTH and receive mail at once."""
        return self.dovecot.add_user(name, password)

    def add_users(self, users: Mapping[str, str]) -> list[str]:
        """Shortcut for ``dovecot.add_users``."""
        return self.dovecot.add_users(users)

    def capture_maildir(self, address: str) -> Path:
        """The Maildir where the capture transport stores mail for ``address``."""
        name = address.strip().lower().replace("/", "_")
        if not name or name.startswith("."):
            name = "_" + name
        return self.capture_dir / name

    def delivered(self, address: str) -> list[bytes]:
        """Messages delivered so far to ``address`` (a bare name means ``name@domain``).

        Test-domain users: their Dovecot INBOX. Other addresses: their capture Maildir.
        """
        addr = self.dovecot.address(address)
        if addr.rpartition("@")[2] == self.domain:
            return self.dovecot.messages(addr)
        return _read_maildir(self.capture_maildir(addr))

    def wait_for_delivery(
        self, user_or_address: str, count: int = 1, timeout: float = 30.0
    ) -> list[bytes]:
        """Wait until at least ``count`` messages were delivered; return all of them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.delivered(user_or_address)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{len(found)} of {count} messages for {user_or_address} after {timeout}s"
                    f"\n--- queue\n{self.queue()}\n--- {self.log_path}\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def queue(self) -> str:
        """``postqueue -p`` output for this instance (what is still waiting or deferred)."""
        proc = subprocess.run(
            [POSTQUEUE_BIN, "-c", str(self.config_dir), "-p"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        return proc.stdout + proc.stderr

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this instance's certificate."""
        return _client_context(self.cert_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __repr__(self) -> str:
        return f"<Postfix {self.host}:{self.port} dir={self.base_dir}>"


# --------------------------------------------------------------------------- fixtures


def _skip_unless_available() -> None:
    reason = servers_available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    """Session-wide Dovecot for ``example.test``; add users with ``dovecot.add_user``."""
    _skip_unless_available()
    with Dovecot() as server:
        yield server


@pytest.fixture(scope="session")
def postfix(dovecot: Dovecot) -> Iterator[Postfix]:
    """Session-wide Postfix submission server delivering into the ``dovecot`` fixture."""
    _skip_unless_available()
    with Postfix(dovecot) as server:
        yield server
