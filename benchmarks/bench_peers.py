"""Our export, import and transfer beside LSST daf_butler's, on the same workload (issues 12 and 18).

* ``peers.export_10k``: our `Butler.export` of the 10,000 60-byte JSON datasets of
  ``bench_transfer`` to a directory bundle; datasets/s. Baseline: daf_butler's ``Butler.export``
  + ``saveDatasets`` of a repository of the same shape to a directory (``export.yaml`` with the
  dimension records, ``transfer="copy"``: what ``butler export`` does). Our zip export's rate is
  in the notes.
* ``peers.import_10k``: our `Butler.import_` of that directory bundle into a new repository;
  baseline: daf_butler's ``Butler.import_`` of its export directory (``transfer="copy"``).
* ``peers.transfer_10k``: our `Butler.transfer_from` into a new repository (hard links);
  baseline: daf_butler's ``Butler.transfer_from`` with its dimension records and dataset types
  (``transfer="auto"``: what ``butler transfer-datasets`` does).

The "x base" column is ours / theirs: above 1 we are faster. Each repetition times ours, then
theirs, so load on the machine falls on both; ``os.sync()`` before each side keeps one side's
write-back out of the other's time. The daf_butler side runs as a child program
(``benchmarks/_daf_peer.py``) under the interpreter named by ``BUTLER_BENCH_DAF_PYTHON`` (or
``--daf-python``), else ``.venv-daf/bin/python`` (``make daf-venv``) if it exists, else this one:
``lsst-daf-butler`` (the ``bench`` extra) installs a ``butler`` command of its own, so it lives in
its own venv. Without it the three report "informational: not installed". Its source repository
is built once (files written in place, one ``ingest``) and cached under ``.bench/cache/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from ._fixtures import cached_repo
from ._runner import PROJECT_ROOT, Context, Result, benchmark, informational, rate_result
from .bench_transfer import _export_rate, _import_rate, _transfer_rate

PEER_REPO_VERSION = "1"
ENV_VAR = "BUTLER_BENCH_DAF_PYTHON"
CHILD = str(PROJECT_ROOT / "benchmarks" / "_daf_peer.py")
DEFAULT_VENV_PYTHON = PROJECT_ROOT / ".venv-daf" / "bin" / "python"
INSTALL_HINT = (f"make daf-venv (a venv with pip install -e '.[bench]'), or set {ENV_VAR} to a python "
                "that has lsst-daf-butler")


@dataclass(frozen=True)
class Peer:
    python: str
    version: str

    @property
    def label(self) -> str:
        return f"daf_butler {self.version}"


def _run(python: str, *args: str, timeout: float) -> dict[str, Any]:
    """Run ``_daf_peer.py`` under ``python``; it prints one JSON object as its last line."""
    proc = subprocess.run([python, CHILD, *args], capture_output=True, text=True, check=False, timeout=timeout,
                          cwd=str(PROJECT_ROOT))
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"daf_butler child `{' '.join(args)}` failed ({proc.returncode}):\n"
                           f"{proc.stderr.strip()[-2000:]}")
    out: dict[str, Any] = json.loads(lines[-1])
    return out


def _find_peer(ctx: Context) -> Peer | str:
    """The interpreter with daf_butler, or why there is none. A ``BUTLER_BENCH_DAF_PYTHON`` that does
    not run or lacks daf_butler is an error (it was asked for); a default that lacks it is not."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise FileNotFoundError(f"{ENV_VAR}={explicit!r} is not an executable file; point it at the python of "
                                    f"a venv with lsst-daf-butler ({INSTALL_HINT})")
        python = explicit
    else:
        python = str(DEFAULT_VENV_PYTHON) if DEFAULT_VENV_PYTHON.exists() else sys.executable
    probe = _run(python, "probe", timeout=120)
    if probe.get("available"):
        ctx.log(f"daf_butler {probe['version']} under {python}")
        return Peer(python, str(probe["version"]))
    if explicit:
        raise LookupError(f"{ENV_VAR}={explicit!r} cannot import lsst.daf.butler ({probe.get('error')}); "
                          f"{INSTALL_HINT}")
    return f"not installed (lsst-daf-butler not importable by {python}; {INSTALL_HINT})"


def _peer(ctx: Context) -> Peer | str:
    found: Peer | str = ctx.fixture("peers.daf_python", _find_peer)
    return found


def _source(ctx: Context, peer: Peer, n: int) -> str:
    """daf_butler's repository of ``n`` datasets, built once per daf_butler version and cached."""
    root, _ = cached_repo(ctx, f"daf-transfer-{n}", f"v{PEER_REPO_VERSION}-{peer.version}",
                          lambda building: _run(peer.python, "build", os.path.join(building, "repo"), str(n),
                                                timeout=1800),
                          f"a daf_butler repository of {n:,} datasets", opened_here=False)
    return os.path.join(root, "repo")  # a name without a dot: daf_butler reads "x.4300" as a config file


def _settle() -> None:
    """Flush dirty pages before each timed side, so the files one side wrote (and removed) are not
    written back during the other's turn."""
    os.sync()


def _versus(n: int, ours: list[Result], theirs: list[float], peer: Peer, what: str,
            extra: dict[str, Any]) -> Result:
    """Our rate (the value) against daf_butler's (the baseline), with our copyfile baseline kept."""
    ours_seconds = [s for r in ours for s in r.extra["seconds"]]
    copy_rates = [r.baseline for r in ours if r.baseline]
    res = rate_result(n, ours_seconds, baseline_seconds=theirs, baseline_label=f"{peer.label}, {what}",
                      notes=f"{n} datasets of 60 bytes, one run, SQLite both; x base = ours / daf_butler's",
                      extra={"daf_butler": peer.version, "daf_seconds": theirs, **extra})
    if copy_rates:
        res.extra["ours_copyfile_rate"] = sorted(copy_rates)[len(copy_rates) // 2]
    return res


@benchmark("peers.export_10k", unit="datasets/s", better="higher",
           description="our Butler.export of 10,000 small datasets to a directory bundle "
                       "(baseline: daf_butler's Butler.export to yaml + copied files)")
def bench_export(ctx: Context) -> Result:
    peer = _peer(ctx)
    if isinstance(peer, str):
        return informational(peer)
    n = ctx.size(10_000, 2_000)
    source = _source(ctx, peer, n)
    ours, ours_zip, theirs = [], [], []
    for i in range(ctx.size(3, 1)):
        _settle()
        ours.append(_export_rate(ctx, "", 1))
        _settle()
        ours_zip.append(_export_rate(ctx, ".zip", 1))
        target = ctx.scratch(f"daf-export-{i}")
        _settle()
        out = _run(peer.python, "export", source, os.path.join(target, "bundle"), timeout=1800)
        assert out["datasets"] == n, out
        theirs.append(float(out["seconds"]))
        shutil.rmtree(target, ignore_errors=True)
    zip_rate = sorted(r.value for r in ours_zip)[len(ours_zip) // 2]
    res = _versus(n, ours, theirs, peer, "export to a directory (transfer=copy)", {"ours_zip_rate": zip_rate})
    res.notes += f"; our zip export {zip_rate:,.0f} datasets/s ({zip_rate / res.baseline:.1f}x theirs)" \
        if res.baseline else ""
    return res


@benchmark("peers.import_10k", unit="datasets/s", better="higher",
           description="our Butler.import_ of a 10,000-dataset directory bundle into a new repository "
                       "(baseline: daf_butler's Butler.import_ of its export, transfer=copy)")
def bench_import(ctx: Context) -> Result:
    peer = _peer(ctx)
    if isinstance(peer, str):
        return informational(peer)
    n = ctx.size(10_000, 2_000)
    source = _source(ctx, peer, n)
    bundle = os.path.join(ctx.scratch("daf-import-bundle"), "bundle")
    exported = _run(peer.python, "export", source, bundle, timeout=1800)
    assert exported["datasets"] == n, exported
    ours, theirs = [], []
    for i in range(ctx.size(3, 1)):
        _settle()
        ours.append(_import_rate(ctx, "", 1))
        dest = ctx.scratch(f"daf-import-{i}")
        _settle()
        out = _run(peer.python, "import", bundle, os.path.join(dest, "repo"), timeout=1800)
        assert out["datasets"] == n, out
        theirs.append(float(out["seconds"]))
        shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(os.path.dirname(bundle), ignore_errors=True)
    return _versus(n, ours, theirs, peer, "import of its export directory (transfer=copy)", {})


@benchmark("peers.transfer_10k", unit="datasets/s", better="higher",
           description="our Butler.transfer_from of 10,000 small datasets into a new repository "
                       "(baseline: daf_butler's Butler.transfer_from, transfer=auto)")
def bench_transfer(ctx: Context) -> Result:
    peer = _peer(ctx)
    if isinstance(peer, str):
        return informational(peer)
    n = ctx.size(10_000, 2_000)
    source = _source(ctx, peer, n)
    ours, theirs, linked = [], [], []
    for i in range(ctx.size(3, 1)):
        _settle()
        ours.append(_transfer_rate(ctx, 1))
        dest = ctx.scratch(f"daf-transfer-{i}")
        _settle()
        out = _run(peer.python, "transfer", source, os.path.join(dest, "repo"), timeout=1800)
        assert out["datasets"] == n, out
        theirs.append(float(out["seconds"]))
        linked.append(bool(out["hard_links"]))
        shutil.rmtree(dest, ignore_errors=True)
    how = "hard links" if all(linked) else "copies"
    return _versus(n, ours, theirs, peer, f"transfer_from with dimension records (transfer=auto: {how})",
                   {"daf_hard_links": all(linked)})
