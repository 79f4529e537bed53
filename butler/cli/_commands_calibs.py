"""``butler certify-calibrations`` and ``butler query-calibrations`` (issue 7)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from ._options import data_id_option, format_option, repo_argument

__all__ = ["certify_calibrations", "query_calibrations"]


@click.command("certify-calibrations")
@repo_argument
@click.argument("run")
@click.argument("collection")
@click.option("--dataset-type", "-t", "dataset_type", required=True, help="The calibration dataset type to certify.")
@click.option("--begin-date", default=None, metavar="TIME",
              help="Start of validity (ISO-8601, e.g. 2026-11-01 or 2026-11-01T12:00:00Z); default: unbounded.")
@click.option("--end-date", default=None, metavar="TIME",
              help="End of validity, excluded (ranges are half-open [begin, end)); default: unbounded.")
@click.option("--split", is_flag=True,
              help="Cut existing overlapping ranges where the new one applies instead of refusing the overlap.")
@data_id_option
def certify_calibrations(repo: str, run: str, collection: str, dataset_type: str, begin_date: str | None,
                         end_date: str | None, split: bool, data_id: dict[str, Any]) -> None:
    """Certify the DATASET_TYPE datasets of RUN into the CALIBRATION collection COLLECTION.

    COLLECTION is created if absent. An overlap with a range already certified for the same data
    ID is refused (the message names it) unless --split is given.

    \b
    Example:
      butler certify-calibrations repo SimCam/calib/flats/run1 SimCam/calib/flats-v2 \\
          --dataset-type flat --begin-date 2026-11-01 --end-date 2026-12-01
    """
    from .._butler import Butler

    butler = Butler(repo, writeable=True)
    refs = butler.query_datasets(dataset_type, collections=run, data_id=data_id or None)
    if not refs:
        raise click.ClickException(f"no {dataset_type!r} datasets in {run!r}{' for ' + str(data_id) if data_id else ''}")
    n = butler.certify(collection, refs, begin_date, end_date, split=split)
    click.echo(f"certified {n} {dataset_type!r} dataset(s) of {run!r} into {collection!r} "
               f"(already certified: {len(refs) - n})")


@click.command("query-calibrations")
@repo_argument
@click.argument("collections", nargs=-1, required=True)
@click.option("--dataset-type", "-t", "dataset_type", required=True, help="The calibration dataset type.")
@click.option("--instrument", default=None, help="Instrument of the data IDs (needed with --exposure/--visit).")
@click.option("--exposure", type=int, default=None, help="Only the calibrations valid at this exposure's start.")
@click.option("--visit", type=int, default=None, help="Only the calibrations valid at this visit's start.")
@click.option("--time", "time_", default=None, metavar="TIME", help="Only the calibrations valid at this time.")
@data_id_option
@format_option
def query_calibrations(repo: str, collections: Sequence[str], dataset_type: str, instrument: str | None,
                       exposure: int | None, visit: int | None, time_: str | None, data_id: dict[str, Any],
                       fmt: str) -> None:
    """List the validity ranges of DATASET_TYPE in CALIBRATION COLLECTIONS (chains expanded).

    \b
    Example:
      butler query-calibrations repo SimCam/calib --dataset-type flat --instrument SimCam --exposure 1234
    """
    from .._butler import Butler
    from ._output import print_rows

    butler = Butler(repo)
    constraints = dict(data_id)
    for key, value in (("instrument", instrument), ("exposure", exposure), ("visit", visit)):
        if value is not None:
            constraints[key] = value
    if ("exposure" in constraints or "visit" in constraints) and "instrument" not in constraints:
        instruments = list(butler.registry.instruments)
        if len(instruments) != 1:
            raise click.UsageError("--exposure/--visit need --instrument (the repository has several instruments)")
        constraints["instrument"] = instruments[0]
    rows = butler.query_calibrations(list(collections), dataset_type, data_id=constraints, time=time_)
    out = [{"type": r["dataset_type"], "collection": r["collection"], "run": r["run"],
            **r["data_id"].to_dict(), "valid": r["valid"], "id": str(r["id"])} for r in rows]
    columns = ["type", "collection", "run", *(rows[0]["data_id"].group.required if rows else ()), "valid", "id"]
    print_rows(out, columns, fmt, empty="no calibrations found")
