"""``mailcrm serve``'s loop runner: uvloop where installed (asyncio's loop on request), and the
heap start-up built frozen out of the garbage collector's full passes soon after the start."""

from __future__ import annotations

import asyncio
import gc

import pytest

from proxy import serve


@pytest.mark.parametrize(("choice", "module"), [("", "uvloop"), ("asyncio", "asyncio")])
def test_serve_runs_on_uvloop_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch, choice: str, module: str
) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.setenv("MAILCRM_EVENT_LOOP", choice)
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])

    serve.run_loop(main())
    assert seen == [module]


def test_the_startup_heap_is_frozen_soon_after_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "STARTUP_SECONDS", 0.05)
    counts: list[int] = []

    async def main() -> None:
        counts.append(gc.get_freeze_count())
        await asyncio.sleep(0.5)
        counts.append(gc.get_freeze_count())

    try:
        serve.run_loop(main())
    finally:
        gc.unfreeze()
    assert counts[0] == 0
    assert counts[1] > 10_000  # modules, classes and the like: the bulk of a Python heap
