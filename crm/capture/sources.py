"""Where ``mailcrm capture`` reads messages from: files, Maildir folders, mbox files, stdin.

Each source yields ``(name, raw bytes or the error that kept it from being read, seen flag)``;
a source that cannot be read is reported, never fatal for the rest of the batch.
"""

from __future__ import annotations

import mailbox
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

Item = tuple[str, bytes | Exception, bool]


def _is_maildir(path: Path) -> bool:
    return path.is_dir() and (path / "cur").is_dir() and (path / "new").is_dir()


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def _maildir(path: Path) -> Iterator[Item]:
    box = mailbox.Maildir(path, factory=None, create=False)
    for key in sorted(box.keys()):
        name = f"{path}/{key}"
        try:
            raw = box.get_bytes(key)
            seen = "S" in box.get_message(key).get_flags()
        except (OSError, KeyError) as exc:
            yield name, exc, False
            continue
        yield name, raw, seen


def _mbox(path: Path) -> Iterator[Item]:
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        for index, key in enumerate(box.keys(), start=1):
            try:
                raw = box.get_bytes(key, from_=False)
            except (OSError, KeyError) as exc:
                yield f"{path}#{index}", exc, False
                continue
            status = _mbox_status(raw)
            yield f"{path}#{index}", raw, "R" in status
    finally:
        box.close()


def _mbox_status(raw: bytes) -> str:
    head = raw.split(b"\n\n", 1)[0]
    for line in head.splitlines():
        if line.lower().startswith(b"status:"):
            return line[7:].decode("ascii", "replace").strip()
    return ""


def _one(path: Path) -> Iterator[Item]:
    try:
        if _is_maildir(path):
            yield from _maildir(path)
        elif path.is_dir():
            for child in sorted(path.iterdir()):
                if child.is_file():
                    yield from _one(child)
        elif _is_mbox(path):
            yield from _mbox(path)
        else:
            yield str(path), path.read_bytes(), False
    except OSError as exc:
        yield str(path), exc, False


def read_sources(paths: Iterable[str], stdin: BinaryIO) -> Iterator[Item]:
    """Every message of every source, in order; ``-`` is one message on standard input."""
    for name in paths:
        if name == "-":
            yield "-", stdin.read(), False
        else:
            yield from _one(Path(name))
