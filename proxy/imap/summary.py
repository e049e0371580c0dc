"""The outcome of one ``mailcrm mailbox import``: counts per folder, the lines and JSON shown.

``imported`` counts new activities (captured), ``duplicates`` messages the CRM had already (from
another folder, the relay or another mailbox), ``skipped`` those the capture rules leave out
(robots, exclusions, unreadable mail). ``interrupted`` names the signal that stopped the run;
``failure`` the reason it could not go on (server, network, lease).
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .importer import ImportStats
from .plan import FolderPlan, MailboxPlan


@dataclass(frozen=True)
class FolderResult:
    """What the import did in one folder."""

    name: str
    direction: str
    imported: int = 0
    duplicates: int = 0
    skipped: int = 0

    def as_json(self) -> dict[str, Any]:
        """One entry of ``folders`` in ``--json``."""
        return {
            "name": self.name,
            "direction": self.direction,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
        }


@dataclass
class ImportSummary:
    """What one run did, and how it ended."""

    address: str
    since: str
    folders: list[FolderResult] = field(default_factory=list)
    interrupted: str | None = None
    failure: str | None = None

    @classmethod
    def of(
        cls,
        plan: MailboxPlan,
        folders: Sequence[FolderPlan],
        stats: Mapping[str, ImportStats],
        interrupted: str | None = None,
        failure: str | None = None,
    ) -> ImportSummary:
        """The summary of a run over ``folders`` with the stored ``stats`` per folder."""
        results = []
        for folder in folders:
            done = stats.get(folder.name, ImportStats())
            results.append(
                FolderResult(
                    folder.name, folder.direction.value, done.captured, done.duplicate, done.skipped
                )
            )
        return cls(plan.address, plan.since, results, interrupted, failure)

    @property
    def imported(self) -> int:
        """New activities."""
        return sum(f.imported for f in self.folders)

    @property
    def duplicates(self) -> int:
        """Messages the CRM had already."""
        return sum(f.duplicates for f in self.folders)

    @property
    def skipped(self) -> int:
        """Messages the capture rules left out."""
        return sum(f.skipped for f in self.folders)

    @property
    def exit_code(self) -> int:
        """0 when finished, 128 + the signal number when interrupted, 1 on a failure."""
        if self.interrupted:
            return 128 + signal.Signals[self.interrupted].value
        return 1 if self.failure else 0

    def counts(self) -> str:
        """``298 imported, 2 duplicates, 0 skipped``."""
        return f"{self.imported} imported, {self.duplicates} duplicates, {self.skipped} skipped"

    def done_line(self) -> str:
        """The line of a finished run."""
        where = ", ".join(f"{f.name} {f.imported}" for f in self.folders) or "no folders"
        return f"{self.address}: {self.counts()} ({where}; window {self.since})"

    def stop_line(self, resume: str) -> str:
        """The line of an interrupted or failed run: what is stored, and how to go on."""
        stored = self.imported + self.duplicates + self.skipped
        if self.interrupted:
            head = f"import of {self.address} interrupted ({self.interrupted})"
        else:
            head = f"import of {self.address} stopped: {self.failure}"
        if not stored and not self.interrupted:
            return head
        return f"{head}; stored so far: {self.counts()}; run `{resume}` to resume"

    def as_json(self) -> dict[str, Any]:
        """The ``--json`` summary."""
        return {
            "address": self.address,
            "since": self.since,
            "imported": self.imported,
            "duplicates": self.duplicates,
            "skipped": self.skipped,
            "folders": [f.as_json() for f in self.folders],
            "interrupted": self.interrupted,
            "error": self.failure,
        }
