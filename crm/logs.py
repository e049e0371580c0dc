"""Log lines (B6): text or one JSON object per line, never a password, a forged line or a mail body.

``configure(fmt)`` (``text`` or ``json``, from ``log_format`` in the config, ``MAILCRM_LOG_FORMAT``
or ``--log-json``) puts the formatter on the root logger's handlers (adding one on stderr when
there is none); the CLI installs the text one from its start. Both formatters clean every
message (:func:`clean`), so no call site has to: each argument is cut at :data:`MAX_VALUE`
characters, credentials are masked (:func:`redact`: in URLs, ``password=...`` style pairs, SMTP
``AUTH`` arguments), control characters (CR, LF, ESC, NUL, the other C0 and C1 codes), Unicode
line and paragraph separators and bidi overrides are escaped (:func:`escape`: a client's login
name with a CRLF in it cannot start a line of its own), and the message is cut at
:data:`MAX_MESSAGE` characters. A traceback keeps its lines, each escaped and indented.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any

MAX_MESSAGE = 2000
MAX_VALUE = 500  # one argument of a log call (a login, an address, a list of recipients...)
MASK = "***"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Bounded repeats: a long hostile value must not make a pattern scan it once per position.
_URL_PASSWORD = re.compile(
    r"(?P<head>\b[a-z][a-z0-9+.-]{0,31}://[^:/@\s]{0,256}:)[^@\s]{0,256}(?=@)", re.I
)
_PAIR = re.compile(
    r"(?P<head>\b(?:password|passwd|pass|pwd|secret|secret_key|token|api_key)\b\s*[=:]\s*)"
    r"(?:(?P<q>['\"])[^'\"\r\n]*(?P=q)?|[^\s'\",;&]+)",
    re.I,
)
_AUTH = re.compile(r"(?P<head>\bAUTH\s+(?:PLAIN|LOGIN|XOAUTH2|CRAM-MD5)\b)[^\r\n]*", re.I)
_UNSAFE = [
    *range(0x20),
    *range(0x7F, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    0xFEFF,
]
_ESCAPES = {code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" for code in _UNSAFE}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
# LogRecord attributes that are not ``extra=`` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def redact(text: str) -> str:
    """``text`` with credentials masked and cut to :data:`MAX_MESSAGE` characters."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    text = _PAIR.sub(lambda m: m["head"] + (m["q"] or "") + MASK + (m["q"] or ""), text)
    text = _AUTH.sub(lambda m: m["head"] + " " + MASK, text)
    return cut(text, MAX_MESSAGE)


def cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how many more there were."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters cut]"


def escape(text: str) -> str:
    """``text`` with control characters, line separators and bidi overrides as ``\\x..``."""
    if text.isprintable():  # the usual case, without a pass per character
        return text
    return text.translate(_ESCAPES)


def clean(text: str) -> str:
    """What a log line may show of ``text``: redacted, escaped, cut."""
    return cut(escape(redact(text)), MAX_MESSAGE)


def _value(arg: Any) -> Any:
    if isinstance(arg, str):
        return cut(redact(arg), MAX_VALUE)  # redacted first: a cut must not split a secret
    if isinstance(arg, bytes | bytearray):
        return f"<{len(arg)} bytes>"  # raw mail never goes to a log
    return arg


def message(record: logging.LogRecord) -> str:
    """The record's message, each argument cut to :data:`MAX_VALUE`, then :func:`clean`."""
    args = record.args
    if isinstance(args, tuple):
        args = tuple(_value(a) for a in args)
    elif isinstance(args, dict):
        args = {k: _value(v) for k, v in args.items()}
    text = str(record.msg)
    if args:
        try:
            text = text % args
        except (TypeError, ValueError):  # a %d given a cut value: the plain message then
            text = record.getMessage()
    return clean(text)


def _traceback(text: str) -> str:
    """A traceback's lines, each escaped and indented: no line of it looks like a log line."""
    return "\n".join("  " + cut(escape(redact(line)), MAX_MESSAGE) for line in text.splitlines())


class RedactingFormatter(logging.Formatter):
    """The usual text line, its message cleaned, a traceback's lines indented."""

    def format(self, record: logging.LogRecord) -> str:
        safe = logging.makeLogRecord(vars(record))
        safe.msg, safe.args = message(record), None
        safe.exc_text = None
        return super().format(safe)

    def formatException(self, ei: Any) -> str:
        return _traceback(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _traceback(stack_info)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, any ``extra=`` fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message(record),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _safe(value)
        if record.exc_info:  # JSON escapes its line breaks; the other controls are escaped here
            lines = self.formatException(record.exc_info).splitlines()
            entry["exception"] = "\n".join(cut(escape(redact(line)), MAX_MESSAGE) for line in lines)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _safe(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"  # raw mail never goes to a log
    return clean(str(value))


def formatter(fmt: str) -> logging.Formatter:
    """The formatter for ``text`` or ``json``."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    return JsonFormatter() if fmt == "json" else RedactingFormatter(TEXT_FORMAT)


def configure(fmt: str, level: int | None = None) -> None:
    """Use ``fmt`` on every root handler (a stderr handler is added when there is none)."""
    root = logging.getLogger()
    chosen = formatter(fmt)
    if not root.handlers:
        root.addHandler(logging.StreamHandler(sys.stderr))
    for handler in root.handlers:
        handler.setFormatter(chosen)
    if level is not None:
        root.setLevel(level)
