"""The Registry/Datastore seam: all SQL lives in ``butler/registry/`` managers.

Outside ``butler/registry/`` (tests and benchmarks aside) no module imports SQLAlchemy (even for
type hints or inside a function) nor opens a transaction on the registry's database itself
(``.db.transaction(``): operations call manager methods, and group several of them atomically
with ``registry.transaction()``.
"""

from __future__ import annotations

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("butler", "orchestration")
REGISTRY = pathlib.PurePosixPath("butler/registry")

ALLOWED: set[str] = set()
"""Modules that still run SQL themselves, while the seam is being finished (issue 12)."""


def _imports_sqlalchemy(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names = [node.module]
        else:
            continue
        if any(n == "sqlalchemy" or n.startswith("sqlalchemy.") for n in names):
            lines.append(node.lineno)
    return sorted(lines)


def _offences(path: pathlib.Path) -> list[str]:
    text = path.read_text()
    found = [f"line {n}: imports sqlalchemy" for n in _imports_sqlalchemy(ast.parse(text, str(path)))]
    found += [f"line {n}: opens a transaction on the registry's database (.db.transaction()"
              for n, line in enumerate(text.splitlines(), 1) if ".db.transaction(" in line]
    return found


def _modules() -> list[pathlib.PurePosixPath]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = pathlib.PurePosixPath(path.relative_to(ROOT).as_posix())
            if REGISTRY not in rel.parents:
                out.append(rel)
    return out


def test_only_registry_managers_run_sql():
    offenders = {}
    for rel in _modules():
        if str(rel) in ALLOWED:
            continue
        found = _offences(ROOT / rel)
        if found:
            offenders[str(rel)] = found
    assert not offenders, (
        "SQL outside butler/registry/ (move each statement into a registry manager method, and use "
        "registry.transaction() to group calls):\n"
        + "\n".join(f"  {path}: {'; '.join(lines)}" for path, lines in sorted(offenders.items()))
    )


def test_the_allow_list_names_only_modules_that_still_run_sql():
    """An entry for a module that no longer runs SQL (or no longer exists) is stale: remove it, so
    the module cannot start again unnoticed."""
    modules = {str(m) for m in _modules()}
    stale = sorted(p for p in ALLOWED if p not in modules or not _offences(ROOT / p))
    assert not stale, f"remove these from ALLOWED in {pathlib.Path(__file__).name}: {stale}"


def test_the_check_sees_what_it_looks_for(tmp_path):
    """The scanner finds imports in functions and under TYPE_CHECKING, and transactions anywhere."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from sqlalchemy.engine import Connection\n"
        "def f(registry):\n"
        "    import sqlalchemy as sa\n"
        "    with registry.db.transaction() as conn:\n"
        "        pass\n"
        "import sqlalchemy_utils  # another package\n"
    )
    assert _offences(sample) == [
        "line 3: imports sqlalchemy", "line 5: imports sqlalchemy",
        "line 6: opens a transaction on the registry's database (.db.transaction()",
    ]


_PRIVATE_BUTLER = re.compile(r"\bfrom butler(\.\w+)*\._\w+|\bimport butler(\.\w+)*\._\w+|\bbutler\._\w+")


def _private_uses(text: str) -> list[str]:
    return [f"line {n}: {m.group(0)}" for n, line in enumerate(text.splitlines(), 1)
            for m in _PRIVATE_BUTLER.finditer(line) if not line.lstrip().startswith("#")]


def test_orchestration_uses_only_the_butlers_public_api():
    """Orchestration imports only public butler modules and touches no private attribute of a Butler
    (it is a client like any other: what it needs is public API, documented and tested as such)."""
    offenders = {str(p.relative_to(ROOT)): found for p in sorted((ROOT / "orchestration").rglob("*.py"))
                 if (found := _private_uses(p.read_text()))}
    assert not offenders, "\n".join(f"  {path}: {'; '.join(found)}" for path, found in offenders.items())


def test_the_private_use_check_sees_what_it_looks_for():
    sample = "from butler._faults import crash_point\nimport butler.datastore._file_io\nbutler._registry.x\n" \
             "from butler.datastore import stage\nbutler.registry.data_ids\n"
    assert [f.split(": ", 1)[1] for f in _private_uses(sample)] == [
        "from butler._faults", "import butler.datastore._file_io", "butler._registry"]
