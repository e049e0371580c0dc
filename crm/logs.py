"""Structured logs (B6): one JSON object per line when asked, and never a password or a mail body.

``configure(fmt)`` (``text`` or ``json``, from ``log_format`` in the config, ``MAILCRM_LOG_FORMAT``
or ``--log-json``) puts the formatter on the root logger's handlers (adding one on stderr when
there is none). Both formatters pass every line through :func:`redact`: credentials in URLs,
``password=...`` style pairs and SMTP ``AUTH`` arguments are masked, and a message is cut at
:data:`MAX_MESSAGE` characters, so a message body that slipped into a log call does not get out.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import Any

MAX_MESSAGE = 2000
MASK = "***"
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s]*(?=@)", re.I)
_PAIR = re.compile(
    r"(?P<head>\b(?:password|passwd|pass|pwd|secret|secret_key|token|api_key)\b\s*[=:]\s*)"
    r"(?:(?P<q>['\"]).*?(?P=q)|[^\s'\",;&]+)",
    re.I,
)
_AUTH = re.compile(r"(?P<head>\bAUTH\s+(?:PLAIN|LOGIN|XOAUTH2|CRAM-MD5)\b)[^\r\n]*", re.I)
# LogRecord attributes that are not ``extra=`` fields.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def redact(text: str) -> str:
    """``text`` with credentials masked and cut to :data:`MAX_MESSAGE` characters."""
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    text = _PAIR.sub(lambda m: m["head"] + (m["q"] or "") + MASK + (m["q"] or ""), text)
    text = _AUTH.sub(lambda m: m["head"] + " " + MASK, text)
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + f"... [{len(text) - MAX_MESSAGE} more characters cut]"
    return text


class RedactingFormatter(logging.Formatter):
    """The usual text line, redacted."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, any ``extra=`` fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = _safe(value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


def _safe(value: Any) -> Any:
    if isinstance(value, bool | int | float) or value is None:
        return value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"  # raw mail never goes to a log
    return redact(str(value))


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
