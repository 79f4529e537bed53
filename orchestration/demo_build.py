"""The main job: build demo coadds end to end (``make demo``).

Creates ``./demo-repo`` (or ``$DEMO_REPO``) with SimCam and the demo skymap (tract 9000), simulates
raws over patches 44..46 in bands g and r into ``SimCam/raw/all``, then plans
``pipelines/coadd.yaml`` and runs it on a LocalCluster into the run ``demo/coadd``. Running it
again resumes: what exists is skipped. Ends by printing where the coadds are and writing a PNG
preview of one of them.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

RAW_RUN = "SimCam/raw/all"
OUTPUT_RUN = "demo/coadd"
PIPELINE = Path(__file__).resolve().parents[1] / "pipelines" / "coadd.yaml"
ID = "tract=9000 patch=44..46 band=g^r"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=os.environ.get("DEMO_REPO", "./demo-repo"))
    parser.add_argument("--cluster", default="local:2", help="local[:N], threads[:N] or a scheduler address")
    parser.add_argument("--visits-per-band", type=int, default=None)
    args = parser.parse_args(argv)

    from butler import Butler
    from butler.instrument import SimCam

    from ._executor import DaskExecutor
    from ._pipeline import Pipeline
    from ._planner import Planner
    from .cli import make_client, parse_id
    from .demo import demo_flavor_records, demo_skymap, simulate_raws, write_preview

    t0 = time.perf_counter()
    repo = os.path.abspath(args.repo)
    if not os.path.exists(os.path.join(repo, "butler.yaml")):
        Butler.create(repo)
        print(f"created repository {repo}")
    butler = Butler(repo, writeable=True)
    if not butler.query_dimension_records("instrument", instrument="SimCam"):
        butler.register_instrument(SimCam())
    skymap = demo_skymap()
    butler.register_skymap(skymap, tracts=[9000])
    butler.insert_dimension_records("flavor", demo_flavor_records(), conflict="skip")
    summary = simulate_raws(butler, skymap_name=skymap.name, tract=9000, patches=[44, 45, 46], bands=("g", "r"),
                            run=RAW_RUN, visits_per_band=args.visits_per_band)
    print(f"raws in {RAW_RUN}: {len(summary['visits'])} visits, {summary['raws_written']} written, "
          f"{summary['raws_skipped']} already there")

    where, bind = parse_id(ID)
    resume = bool(butler.query_collections(OUTPUT_RUN))
    plan = Planner(butler).build(Pipeline.from_yaml(PIPELINE), inputs=[RAW_RUN], output_run=OUTPUT_RUN,
                                 where=where, bind=bind, resume=resume)
    print(plan.summary())
    with make_client(args.cluster) as client:
        print(f"dashboard: {client.dashboard_link}")
        report = DaskExecutor(client, retries=1, resume_command="make demo").run(plan, butler)
    print(report.summary())
    if not report.ok:
        return 1
    coadds = butler.query_datasets("coadd", collections=OUTPUT_RUN)
    print(f"{len(coadds)} coadds in run {OUTPUT_RUN!r} of {repo}:")
    for ref in sorted(coadds, key=lambda r: tuple(str(v) for v in r.data_id.values))[:12]:
        print(f"  {ref.data_id}")
    # Beside the repository, not in it: a repository holds only what its registry knows (verify).
    preview = os.path.abspath(repo).rstrip(os.sep) + "-preview-coadd-45-r-deep.png"
    coadd = butler.get("coadd", skymap=skymap.name, tract=9000, patch=45, band="r", flavor="deep",
                       collections=OUTPUT_RUN)
    write_preview(coadd, preview)
    print(f"preview: {preview}")
    print(f"demo done in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
