"""Small values of the relay's SMTP: an upstream's :class:`Reply` and what it can take
(:class:`Caps`). Where a user's mail goes (``Endpoint``) and ``is_loopback`` are the shared
vocabulary's (:mod:`crm.vocab`).

The upstream client (:mod:`proxy.smtp.upstream`) makes them, the relay's server side
(:mod:`proxy.smtp.session`, :mod:`proxy.smtp.delivery`, :mod:`proxy.smtp.server`) reads them;
none of them does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """An SMTP reply: code and text (lines separated by ``\\n``, as aiosmtplib gives them)."""

    code: int
    text: str

    def line(self) -> str:
        """The reply as the relay pushes it to its client (multi-line replies kept)."""
        lines = [_clean(t) for t in self.text.split("\n")] or [""]
        head = [f"{self.code}-{t}" for t in lines[:-1]]
        return "\r\n".join([*head, f"{self.code} {lines[-1]}".rstrip()])

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


def _clean(text: str) -> str:
    if text.isprintable():  # the usual case, without a pass per character
        return text[:500]
    return "".join(c if c.isprintable() else " " for c in text)[:500]


@dataclass(frozen=True)
class Caps:
    """What the upstream can take, as far as the relay mirrors it in its own EHLO."""

    size: int | None = None  # None: no SIZE extension; 0: SIZE without a stated limit
    eightbit: bool = False
    smtputf8: bool = False

    @classmethod
    def from_extensions(cls, ext: dict[str, str]) -> Caps:
        size = ext.get("size", "").strip() if "size" in ext else None
        return cls(
            size=None if size is None else int(size) if size.isdigit() else 0,
            eightbit="8bitmime" in ext,
            smtputf8="smtputf8" in ext,
        )
