"""The architecture of ARCHITECTURE.md, checked on the source (issue 17): the import graph of
``crm/``, ``proxy/`` and ``cli.py`` read with :mod:`ast`, every import counted (a lazy one inside a
function too, since it couples the modules all the same)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("crm", "proxy", "cli")
# What proxy/ (the CLI's proxy/cli/ too) and cli.py may import from crm: the face and the small
# shared vocabulary.
FRONT_MAY_USE = ("crm.face", "crm.errors", "crm.config", "crm.vocab", "crm.logs")
MAX_LINES = 400


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    paths = [*ROOT.glob("crm/**/*.py"), *ROOT.glob("proxy/**/*.py"), ROOT / "cli.py"]
    return {_module(p): p for p in paths if "migrations" not in p.parts}


def _imported(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports (its package's ``__init__`` included, as Python does)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                yield full if full in modules() else base


@cache
def graph() -> dict[str, frozenset[str]]:
    """Module -> the modules of ours it imports."""
    out: dict[str, frozenset[str]] = {}
    for name, path in modules().items():
        out[name] = frozenset(
            target
            for target in _imported(name, path)
            if target.split(".")[0] in OURS and target in modules() and target != name
        )
    return out


def all_imports(name: str) -> set[str]:
    return set(_imported(name, modules()[name]))


def test_no_import_circles() -> None:
    edges, cycles = graph(), []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_sqlalchemy_only_inside_crm() -> None:
    outside = {
        name
        for name in modules()
        if not name.startswith("crm")
        and any(i.split(".")[0] == "sqlalchemy" for i in all_imports(name))
    }
    assert sorted(outside) == []


def test_front_ends_reach_the_crm_only_through_its_face() -> None:
    wrong = {
        (name, target)
        for name in modules()
        if not name.startswith("crm")
        for target in all_imports(name)
        if target.split(".")[0] == "crm"
        and target != "crm"
        and not any(_within(target, door) for door in FRONT_MAY_USE)
    }
    assert sorted(wrong) == []


def test_old_component_paths_still_resolve() -> None:
    """Paths of serve's components before the re-room (scripts may name them) load the same."""
    from proxy.serve import COMPONENTS, MOVED, _load

    current = dict(COMPONENTS)
    for old, new in MOVED.items():
        assert _load(old) is _load(new)
        assert new in current.values()


def test_the_crm_never_imports_its_front_ends() -> None:
    wrong = sorted(
        f"{name} imports {target}"
        for name in modules()
        if name.startswith("crm")
        for target in graph()[name]
        if not target.startswith("crm")
    )
    assert wrong == []


def test_the_rules_and_mail_knowledge_know_no_database() -> None:
    pure = [
        name for name in modules() if name == "crm.capture.pipeline" or _within(name, "crm.mail")
    ]
    wrong = sorted(
        f"{name} imports {target}"
        for name in pure
        for target in all_imports(name)
        if any(_within(target, no) for no in ("crm.store", "sqlalchemy", "crm.face"))
    )
    assert wrong == []


def test_the_crm_is_in_rooms() -> None:
    top = sorted(p.name for p in (ROOT / "crm").glob("*.py"))
    rooms = sorted(p.parent.name for p in (ROOT / "crm").glob("*/__init__.py"))
    assert len(top) <= 8, top
    assert len(rooms) >= 4, rooms
    assert (ROOT / "proxy" / "smtp" / "__init__.py").is_file()  # the relay has a room


def test_no_module_is_too_long() -> None:
    long = sorted(
        f"{name}: {n} lines"
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    )
    assert long == []


def test_the_cli_entry_is_thin() -> None:
    """cli.py only assembles the command groups of proxy/cli/, one module per group."""
    assert len((ROOT / "cli.py").read_text().splitlines()) <= 300
    groups = sorted(p.stem for p in (ROOT / "proxy" / "cli").glob("*.py") if p.stem != "__init__")
    assert len(groups) >= 5, groups
    assert {f"proxy.cli.{g}" for g in groups} <= set(modules())  # the door's checks cover them
