"""End-to-end demo of the core butler: create a SimCam repository, store synthetic raws, query.

Run with ``make demo`` (or ``python -m butler.demo --repo ./demo-repo``). Running it again
reuses the repository and skips what is already there.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timedelta, timezone

RAW_RUN = "SimCam/raw/all"
BANDS = ("g", "r")
VISITS_PER_BAND = 3


def _visit_records() -> list[dict]:
    start = datetime(2026, 11, 24, 3, 0, tzinfo=timezone.utc)
    records = []
    for b, band in enumerate(BANDS):
        for i in range(VISITS_PER_BAND):
            visit = 1000 + 10 * b + i
            begin = start + timedelta(minutes=2 * (b * VISITS_PER_BAND + i))
            records.append({
                "instrument": "SimCam", "id": visit, "physical_filter": f"SimCam-{band}", "day_obs": 20261124,
                "exposure_time": 30.0, "begin": begin, "end": begin + timedelta(seconds=30),
                "tracking_ra": 150.0 + 0.01 * i, "tracking_dec": 2.0, "sky_angle": 0.0, "seeing": 0.7 + 0.05 * i,
            })
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repo", default=os.environ.get("DEMO_REPO", "./demo-repo"))
    args = parser.parse_args(argv)

    import numpy as np

    from butler import Butler, DatasetType
    from butler.instrument import SimCam

    t0 = time.perf_counter()
    if not os.path.exists(os.path.join(args.repo, "butler.yaml")):
        Butler.create(args.repo)
        print(f"created repository {os.path.abspath(args.repo)}")
    butler = Butler(args.repo, run=RAW_RUN)
    butler.register_instrument(SimCam())
    visits = _visit_records()
    butler.insert_dimension_records("exposure", [
        {k: v for k, v in r.items() if k not in ("seeing",)} for r in visits
    ], conflict="skip")
    butler.insert_dimension_records("visit", visits, conflict="skip")
    raw = DatasetType("raw", ("instrument", "exposure", "detector"), "NumpyArray")
    butler.register_dataset_type(raw)

    existing = set()
    if butler.query_collections(RAW_RUN):
        existing = {ref.data_id for ref in butler.query_datasets("raw", collections=RAW_RUN)}
    rng = np.random.default_rng(42)
    items = []
    for record in visits:
        for detector in range(9):
            data_id = {"instrument": "SimCam", "exposure": record["id"], "detector": detector}
            image = (1000 + rng.normal(0, 10, size=(64, 64))).astype(np.float32)
            items.append((image, raw, data_id))
    todo = [it for it in items if not any(d == it[2] for d in existing)]
    if todo:
        butler.put_many(todo)
    print(f"raws: {len(items) - len(todo)} already stored, {len(todo)} written to {RAW_RUN}")

    refs = butler.query_datasets("raw", collections=RAW_RUN, where="band = 'r' AND exposure.exposure_time > 10")
    print(f"query 'band = r': {len(refs)} raws, e.g. {refs[0].data_id}")
    ids = butler.query_data_ids(["visit", "detector"], where="instrument = 'SimCam' AND visit.seeing < 0.8")
    print(f"visit+detector data IDs with seeing < 0.8: {len(ids)}")
    image = butler.get("raw", instrument="SimCam", exposure=1000, ccd=4, collections=RAW_RUN)
    print(f"raw exposure=1000 ccd=4: {image.shape} mean={image.mean():.1f}")
    problems = butler.verify()
    print(f"verify: {'no problems' if not problems else problems}")
    print(f"done in {time.perf_counter() - t0:.1f} s; repository at {os.path.abspath(args.repo)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
