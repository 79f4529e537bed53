"""The notebooks run: every code cell of each notebook, in order, in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def notebook_code(path: Path) -> str:
    nb = json.loads(path.read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    return "\n\n".join(line for line in cells if not line.lstrip().startswith(("%", "!")))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path) -> None:
    code = notebook_code(path)
    assert "DaskExecutor" in code or "Butler" in code
    env = {**os.environ, "MPLBACKEND": "Agg", "TMPDIR": str(tmp_path)}
    # Run via -c (no __main__ file), as a Jupyter kernel does: spawned Dask workers do not re-run it.
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "quanta succeeded" in result.stdout and "0 failed" in result.stdout
    assert "(200, 200)" in result.stdout


def test_there_is_a_quickstart_notebook() -> None:
    assert any(p.stem == "quickstart" for p in NOTEBOOKS)
