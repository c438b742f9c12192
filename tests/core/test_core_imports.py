"""megagate/core is sans-I/O: no module in it may import a framework, an event loop, sockets or clocks."""

from __future__ import annotations

import ast
from pathlib import Path

import megagate.core

FORBIDDEN = {"starlette", "anyio", "httpcore", "hypercorn", "socket", "time", "asyncio", "trio", "random", "ssl"}
CORE = Path(megagate.core.__file__).parent


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_nothing_with_io() -> None:
    offenders = {str(p.name): imported_roots(p) & FORBIDDEN for p in CORE.rglob("*.py")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_core_imports_nothing_outside_core_from_megagate() -> None:
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("megagate."):
                assert node.module.startswith("megagate.core"), f"{path.name} imports {node.module}"


def test_the_walker_catches_an_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom starlette.routing import Route\n")
    assert imported_roots(bad) & FORBIDDEN == {"time", "starlette"}
