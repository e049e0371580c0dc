"""The web dashboard's figures, kept ready so that no request computes them (issue 18: every page
under 100 ms on 100,000 leads and 1,000,000 activities, where computing them takes a second).

A request only *reads* the last figures of its view (:meth:`FigureKeeper.read`), which also marks
the view as wanted; a background task of the web app calls :meth:`FigureKeeper.refresh` in a
worker thread on a schedule for every view wanted lately (and always for the ``all`` view). A
view is what a viewer sees under SPEC V1: everyone who sees all shares the ``all`` view; an
``own`` user has their own, computed with their exact visibility rule. Bounded: at most
``max_views`` views are kept, and one nobody asked for in ``forget_after`` seconds is dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from crm.vocab import utcnow

from .visibility import Viewer
from .web import Dashboard, dashboard

log = logging.getLogger(__name__)
View = int | None  # an ``own`` user's id; None: the ``all`` view
EVERY = 60.0  # s between two computations of a wanted view
RECENT = 15 * 60.0  # s a view stays wanted after its last request
FORGET = 3600.0  # s after which an unwanted view's figures are dropped
MAX_VIEWS = 1000


@dataclass(frozen=True)
class Kept:
    """A view's last figures and when they were computed."""

    figures: Dashboard
    as_of: dt.datetime


def view_of(viewer: Viewer | None) -> View:
    """The view ``viewer`` sees: None (all) for the admin CLI and ``all`` users."""
    return None if viewer is None or viewer.sees_all else viewer.user_id


class FigureKeeper:
    """The last figures of each wanted view; thread-safe (read on the event loop, refreshed in a
    worker thread)."""

    def __init__(
        self,
        *,
        every: float = EVERY,
        recent: float = RECENT,
        forget_after: float = FORGET,
        max_views: int = MAX_VIEWS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every, self.recent, self.forget_after = every, recent, forget_after
        self.max_views, self.clock = max_views, clock
        self._lock = threading.Lock()
        self._kept: dict[View, tuple[float, Kept]] = {}  # view -> (computed at, figures)
        self._wanted: dict[View, tuple[float, Viewer | None]] = {None: (clock(), None)}

    def read(self, viewer: Viewer | None) -> Kept | None:
        """The last figures of ``viewer``'s view (None: not computed yet); marks it wanted."""
        view = view_of(viewer)
        with self._lock:
            if view not in self._wanted and len(self._wanted) >= self.max_views:
                self._drop_oldest()
            self._wanted[view] = (self.clock(), viewer if view is not None else None)
            kept = self._kept.get(view)
        return kept[1] if kept else None

    def _drop_oldest(self) -> None:
        """Make room: forget the ``own`` view asked for longest ago."""
        views = [(asked, view) for view, (asked, _) in self._wanted.items() if view is not None]
        if views:
            _, oldest = min(views, key=lambda av: av[0])
            del self._wanted[oldest]
            self._kept.pop(oldest, None)

    def due(self) -> list[Viewer | None]:
        """The viewers whose view should be computed now: wanted lately and never computed or
        computed ``every`` seconds ago; never-computed first. Drops views unwanted too long."""
        now = self.clock()
        with self._lock:
            for view, (asked, _) in list(self._wanted.items()):
                if view is not None and now - asked > self.forget_after:
                    del self._wanted[view]
                    self._kept.pop(view, None)
            due = [
                (view in self._kept, viewer)
                for view, (asked, viewer) in self._wanted.items()
                if (view is None or now - asked <= self.recent)
                and (view not in self._kept or now - self._kept[view][0] >= self.every)
            ]
        return [viewer for _, viewer in sorted(due, key=lambda d: d[0])]

    def waiting(self) -> bool:
        """Whether some wanted view has no figures yet."""
        with self._lock:
            return any(view not in self._kept for view in self._wanted)

    def refresh(self, session: Session, viewer: Viewer | None) -> Kept:
        """Compute ``viewer``'s view now (in a worker thread: it takes a while) and keep it."""
        view, started = view_of(viewer), self.clock()
        kept = Kept(dashboard(session, viewer if view is not None else None), utcnow())
        who = viewer.email if view is not None and viewer else "all"
        log.debug("dashboard figures of %s computed in %.2f s", who, self.clock() - started)
        with self._lock:
            if view in self._wanted:
                self._kept[view] = (started, kept)
        return kept
