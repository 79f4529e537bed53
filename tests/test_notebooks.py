"""The notebooks run in a real Jupyter kernel (nbclient + ipykernel), every code cell in order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"


def execute(path: Path, cwd: Path) -> list[dict]:
    """Run the notebook in a fresh python3 kernel; the executed code cells with their outputs."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()
    return [c for c in nb.cells if c.cell_type == "code"]


def text_of(cells: list[dict]) -> str:
    out = []
    for cell in cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
    return "\n".join(out)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_a_jupyter_kernel(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the kernel inherits it: the demo repo lands in tmp_path
    cells = execute(path, tmp_path)
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    text = text_of(cells)
    if path.stem == "quickstart":
        assert "quanta succeeded" in text and "0 failed" in text
        assert "(200, 200)" in text
        outputs = [o for c in cells for o in c.get("outputs", [])]
        # The executor's default in a kernel is a progress bar, drawn as an ipywidgets widget ...
        widgets = [o for o in outputs if WIDGET in o.get("data", {})]
        assert widgets, "no progress widget in the executed notebook"
        # ... and the cutout is plotted inline.
        assert any("image/png" in o.get("data", {}) for o in outputs)


def test_there_is_a_quickstart_notebook() -> None:
    assert any(p.stem == "quickstart" for p in NOTEBOOKS)
    nb = json.loads((NOTEBOOKS[0].parent / "quickstart.ipynb").read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
