"""The daf_butler peer benchmarks without daf_butler: `make bench` must keep working (issue 12).

An interpreter without lsst-daf-butler is made real by running this one with ``-S`` (no
site-packages) behind a small script. Found by default, it makes the peers.* benchmarks
informational; named in ``BUTLER_BENCH_DAF_PYTHON``, it is an error saying what to install.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import _runner, bench_peers


@pytest.fixture
def bare_python(tmp_path: Path) -> str:
    """An executable that starts a Python without site-packages (so without lsst.daf.butler)."""
    script = tmp_path / "bare-python"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[_runner.Context]:
    context = _runner.Context(quick=True, cache_dir=tmp_path / "cache")
    yield context
    context.close()


PEERS = ("peers.export_10k", "peers.import_10k", "peers.transfer_10k")


def test_default_interpreter_without_daf_butler_is_informational(
        bare_python: str, ctx: _runner.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(bench_peers.ENV_VAR, raising=False)
    monkeypatch.setattr(bench_peers, "DEFAULT_VENV_PYTHON", Path(bare_python))
    for name in PEERS:
        out = _runner.run_one(_runner.BENCHMARKS[name], ctx)
        assert out.status == "INFO", out.error
        assert out.value is None and out.ratio is None
        assert out.notes.startswith("informational: not installed")
        assert "make daf-venv" in out.notes and bench_peers.ENV_VAR in out.notes
    assert not (ctx.cache_dir / "cache").exists()  # nothing was built
    assert "INFO" in _runner.format_table([out])


def test_named_interpreter_without_daf_butler_is_an_error(
        bare_python: str, ctx: _runner.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(bench_peers.ENV_VAR, bare_python)
    out = _runner.run_one(_runner.BENCHMARKS["peers.export_10k"], ctx)
    assert out.status == "ERROR"
    assert out.error.startswith("LookupError: ")
    assert f"{bench_peers.ENV_VAR}={bare_python!r} cannot import lsst.daf.butler" in out.error
    assert "pip install -e '.[bench]'" in out.error


def test_named_interpreter_that_does_not_exist_is_an_error(
        tmp_path: Path, ctx: _runner.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = str(tmp_path / "no-such-venv" / "bin" / "python")
    monkeypatch.setenv(bench_peers.ENV_VAR, missing)
    out = _runner.run_one(_runner.BENCHMARKS["peers.transfer_10k"], ctx)
    assert out.status == "ERROR"
    assert out.error.startswith("FileNotFoundError: ")
    assert f"{missing!r} is not an executable file" in out.error
    assert not os.path.exists(missing)
