"""The main job (``make demo``) end to end in a subprocess: real LocalCluster, real files; a second
run resumes; the README's ``butler run`` command works as written on the demo repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from butler import Butler

PROJECT = Path(__file__).resolve().parents[1]


def demo(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestration.demo_build", "--repo", str(repo)], cwd=PROJECT,
                          check=False, capture_output=True, text=True, timeout=600, env=dict(os.environ, BUTLER_USER="demo"))


@pytest.mark.slow
def test_demo_builds_coadds_then_resumes(tmp_path):
    repo = tmp_path / "demo-repo"
    first = demo(repo)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "158 quanta succeeded (0 with nothing to do), 0 skipped, 0 failed, 0 blocked" in first.stdout
    assert f"24 coadds in run 'demo/coadd' of {repo}" in first.stdout
    preview = tmp_path / "demo-repo-preview-coadd-45-r-deep.png"
    assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    butler = Butler(repo)
    coadds = butler.query_datasets("coadd", collections="demo/coadd")
    keys = {(r.data_id["patch"], r.data_id["band"], r.data_id["flavor"]) for r in coadds}
    flavors = {f for _, _, f in keys}
    assert {"deep", "bestSeeing"} <= flavors and sum(f.startswith("nightly-") for f in flavors) == 2
    assert keys == {(p, b, f) for p in (44, 45, 46) for b in ("g", "r") for f in flavors}
    deep = butler.get("coadd", skymap="demo", tract=9000, patch=45, band="r", flavor="deep",
                      collections="demo/coadd")
    covered = np.isfinite(deep.image)
    assert covered.mean() > 0.5, covered.mean()  # the raws cover most of patch 45 (no data: NaN)
    pixels = deep.image[covered]
    assert float(pixels.max()) > 10 * float(np.median(np.abs(pixels)))  # stars stand out of the background
    assert butler.verify() == []

    second = demo(repo)  # resumes: nothing runs again
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 quanta succeeded (0 with nothing to do), 158 skipped" in second.stdout
    assert "0 written, 108 already there" in second.stdout
    assert {r.id for r in Butler(repo).query_datasets("coadd", collections="demo/coadd")} == {r.id for r in coadds}

    # The README / issue command, as written, plans on the demo repository (dry run: nothing written).
    dry = subprocess.run([os.path.join(os.path.dirname(sys.executable), "butler"), "run", str(repo),
                          "pipelines/coadd.yaml", "-i", "SimCam/raw/all", "-o", "u/alice/coadd",
                          "--id", "tract=9000 patch=44..46 band=g^r", "--cluster", "local:2", "--retries", "2",
                          "--dry-run"], check=False, cwd=PROJECT, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, BUTLER_USER="alice"))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "calibrate" in dry.stdout and "warp" in dry.stdout and "coadd" in dry.stdout
    assert not Butler(repo).query_collections("u/alice/coadd")
