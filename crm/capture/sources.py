"""Where ``mailcrm capture`` reads messages from: files, Maildir folders, mbox files, stdin.

Each source yields ``(name, raw bytes or the error that kept it from being read, seen flag)``;
a source that cannot be read is reported, never fatal for the rest of the batch. Messages are
only read here, never parsed (a Maildir message's flags come from its file name): parsing is
capture's, which skips a message it cannot read with a reason.
"""

from __future__ import annotations

import mailbox
import os
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
    flags = _maildir_flags(path, box.colon)
    for key in sorted(box.keys()):
        name = f"{path}/{key}"
        try:
            raw = box.get_bytes(key)
        except (OSError, KeyError) as exc:
            yield name, exc, False
            continue
        yield name, raw, "S" in flags.get(key, "")


def _maildir_flags(path: Path, colon: str) -> dict[str, str]:
    """Key -> flags of every message of a Maildir, from the file names (``key:2,FS``)."""
    flags: dict[str, str] = {}
    for sub in ("new", "cur"):
        for entry in os.scandir(path / sub):
            if not entry.name.startswith("."):
                key, _, info = entry.name.partition(colon)
                flags[key] = info[2:] if info.startswith("2,") else ""
    return flags


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
