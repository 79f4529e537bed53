"""The daf_butler side of the peer benchmarks, run as a child program by ``bench_peers``.

Runs under the interpreter that has ``lsst-daf-butler`` (the ``bench`` extra, in its own venv:
see docs/benchmarks.md) and imports nothing of ours: both packages install a ``butler`` command,
so they are kept apart. Usage::

    python benchmarks/_daf_peer.py probe               # {"available": ..., "version": ...}
    python benchmarks/_daf_peer.py build ROOT N        # a repo of N 60-byte JSON datasets
    python benchmarks/_daf_peer.py export ROOT DIR     # export its run to DIR (yaml + files)
    python benchmarks/_daf_peer.py import BUNDLE DEST  # import that export into a new repo DEST
    python benchmarks/_daf_peer.py transfer ROOT DEST  # transfer_from ROOT into a new repo DEST

Repository paths must not end in a name with a dot (daf_butler reads ``x.building`` as a config
file of format "building"). Each prints one JSON object as its last line: ``seconds`` of the timed call only (repository
creation and opening stay outside, as in ours), ``datasets`` it handled, and a few facts.
The repository mirrors ours (``benchmarks/bench_transfer.py``): instrument SimCam with 9
detectors, ``metrics`` datasets (``instrument, visit, detector``, StructuredDataDict, JSON files)
of one run, ``ceil(N / 9)`` visits; files are written in place and ingested in one call
(daf_butler's ``put`` of 10,000 datasets would take minutes).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

INSTRUMENT = "SimCam"
DETECTORS = tuple(range(9))
RUN = "bench/transfer"
DATASET_TYPE = "metrics"
EXPORT_FILE = "export.yaml"


def _records(n_visits: int) -> dict[str, list[dict[str, Any]]]:
    """Dimension records for SimCam, its filters, one day_obs, its detectors and ``n_visits`` visits."""
    visits = []
    for v in range(1, n_visits + 1):
        band = "g" if v % 5 == 0 else "r"
        visits.append({"instrument": INSTRUMENT, "id": v, "name": f"v{v}", "physical_filter": f"SimCam-{band}",
                       "day_obs": 20261124, "exposure_time": 30.0})
    return {
        "instrument": [{"name": INSTRUMENT, "visit_max": 1 << 20, "exposure_max": 1 << 20, "detector_max": 64,
                        "class_name": "bench.SimCam"}],
        "physical_filter": [{"instrument": INSTRUMENT, "name": f"SimCam-{b}", "band": b} for b in ("g", "r")],
        "day_obs": [{"instrument": INSTRUMENT, "id": 20261124}],
        "detector": [{"instrument": INSTRUMENT, "id": d, "full_name": f"S{d}"} for d in DETECTORS],
        "visit": visits,
    }


def _box(visit: int, detector: int) -> Any:
    from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d

    lon, lat = visit % 360, detector * 0.2 - 1
    corners = [(lon, lat), (lon + 0.2, lat), (lon + 0.2, lat + 0.2), (lon, lat + 0.2)]
    return ConvexPolygon([UnitVector3d(LonLat.fromDegrees(a, b)) for a, b in corners])


def build(root: str, n: int) -> dict[str, Any]:
    """A repository of ``n`` datasets with files (what export and transfer read)."""
    from lsst.daf.butler import Butler, DatasetRef, DatasetType, FileDataset

    start = time.perf_counter()
    Butler.makeRepo(root)
    butler = Butler.from_config(root, writeable=True, run=RUN)
    n_visits = -(-n // len(DETECTORS))
    for element, rows in _records(n_visits).items():
        butler.registry.insertDimensionData(element, *rows)
    # Every visit+detector data ID has a visit_detector_region record in a real repository (export
    # reads them): a small box per detector.
    butler.registry.insertDimensionData("visit_detector_region", *[
        {"instrument": INSTRUMENT, "visit": v, "detector": d, "region": _box(v, d)}
        for v in range(1, n_visits + 1) for d in DETECTORS])
    dataset_type = DatasetType(DATASET_TYPE, ("instrument", "visit", "detector"), "StructuredDataDict",
                               universe=butler.dimensions)
    butler.registry.registerDatasetType(dataset_type)
    butler.registry.registerRun(RUN)
    datasets: list[Any] = []
    made: set[str] = set()
    for v in range(1, n_visits + 1):
        for d in DETECTORS:
            if len(datasets) >= n:
                break
            directory = os.path.join(root, RUN, DATASET_TYPE, str(v))
            if directory not in made:
                os.makedirs(directory, exist_ok=True)
                made.add(directory)
            path = os.path.join(directory, f"{DATASET_TYPE}_{INSTRUMENT}_{v}_{d}.json")
            with open(path, "wb") as stream:
                stream.write(f'{{"visit": {v}, "detector": {d}, "payload": "{"x" * 20}"}}'.encode())
            ref = DatasetRef(dataset_type, {"instrument": INSTRUMENT, "visit": v, "detector": d}, run=RUN)
            datasets.append(FileDataset(path=path, refs=[ref],
                                        formatter="lsst.daf.butler.formatters.json.JsonFormatter"))
    butler.ingest(*datasets, transfer=None)  # in place: the files are already under the root
    return {"datasets": len(datasets), "seconds": time.perf_counter() - start}


def _refs(butler: Any) -> list[Any]:
    return list(butler.query_datasets(DATASET_TYPE, collections=RUN, limit=None, explain=False))


def export(root: str, directory: str) -> dict[str, Any]:
    """``Butler.export`` of the run's datasets (their dimension records too) with copies of the files."""
    from lsst.daf.butler import Butler

    butler = Butler.from_config(root)
    butler.registry.queryDatasetTypes()  # open the registry before the clock starts
    os.makedirs(directory, exist_ok=True)
    start = time.perf_counter()
    refs = _refs(butler)
    with butler.export(directory=directory, filename=EXPORT_FILE, transfer="copy") as exporter:
        exporter.saveDatasets(refs)
    seconds = time.perf_counter() - start
    return {"datasets": len(refs), "seconds": seconds}


def import_(bundle: str, dest: str) -> dict[str, Any]:
    """``Butler.import_`` of an export directory into a new repository (files copied)."""
    from lsst.daf.butler import Butler

    Butler.makeRepo(dest)
    butler = Butler.from_config(dest, writeable=True)
    butler.registry.queryDatasetTypes()
    start = time.perf_counter()
    butler.import_(directory=bundle, filename=EXPORT_FILE, transfer="copy")
    seconds = time.perf_counter() - start
    count = len(_refs(butler))
    return {"datasets": count, "seconds": seconds}


def transfer(root: str, dest: str) -> dict[str, Any]:
    """``Butler.transfer_from`` of the run into a new repository (dataset types and dimension records
    with it, ``transfer="auto"``: daf_butler's default)."""
    from lsst.daf.butler import Butler

    source = Butler.from_config(root)
    source.registry.queryDatasetTypes()
    Butler.makeRepo(dest)
    target = Butler.from_config(dest, writeable=True)
    target.registry.queryDatasetTypes()
    start = time.perf_counter()
    refs = _refs(source)
    moved = target.transfer_from(source, refs, transfer="auto", register_dataset_types=True,
                                 transfer_dimensions=True)
    seconds = time.perf_counter() - start
    uri = target.getURI(next(iter(moved)))
    linked = os.stat(uri.ospath).st_nlink > 1
    return {"datasets": len(moved), "seconds": seconds, "hard_links": linked}


def probe() -> dict[str, Any]:
    """Whether this interpreter has daf_butler, and which version (the runner's availability check)."""
    try:
        import lsst.daf.butler  # noqa: F401
    except ImportError as err:
        return {"available": False, "error": f"{type(err).__name__}: {err}"}
    from importlib.metadata import version

    return {"available": True, "version": version("lsst-daf-butler")}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING)
    op, *args = argv or ["?"]
    if op == "probe":
        out = probe()
    elif op == "build":
        out = build(args[0], int(args[1]))
    elif op == "export":
        out = export(args[0], args[1])
    elif op == "import":
        out = import_(args[0], args[1])
    elif op == "transfer":
        out = transfer(args[0], args[1])
    else:
        raise SystemExit(f"unknown operation {op!r}; expected probe, build, export, import or transfer")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
