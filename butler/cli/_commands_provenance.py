"""``butler query-provenance``: the quantum records of pipeline executions (issue 6)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import click

from ._options import collections_option, data_id_option, format_option, repo_argument, where_option

__all__ = ["query_provenance"]

_STATUSES = ("succeeded", "no-work", "failed")


@click.command("query-provenance")
@repo_argument
@click.option("--run", default=None, help="Only quanta of this output run.")
@click.option("--task", default=None, help="Only quanta of this task label.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(_STATUSES),
              help="Only quanta with this status (repeatable).")
@click.option("--dataset", "dataset_type", default=None, metavar="TYPE",
              help="Instead: the quanta that wrote the TYPE datasets selected by -c/-w/-d.")
@collections_option("Collections in which to find the --dataset datasets (repeatable; globs and chains allowed).")
@where_option
@data_id_option
@format_option
def query_provenance(repo: str, run: str | None, task: str | None, statuses: Sequence[str], dataset_type: str | None,
                     collections: Sequence[str], where: str | None, data_id: dict[str, Any], fmt: str) -> None:
    """List the quanta that pipelines executed in REPO: task, data ID, status, host, worker, times, errors.

    \b
    Examples:
      butler query-provenance repo --run u/alice/coadd --status failed
      butler query-provenance repo --dataset coadd -c u/alice/coadd -d tract=9000 -d patch=45 --format json
    """
    from .._butler import Butler
    from ._output import print_rows

    butler = Butler(repo)
    if dataset_type is None:
        if collections or where or data_id:
            raise click.UsageError("-c/-w/-d select datasets: give --dataset TYPE with them")
        records = butler.query_provenance(run=run, task=task, status=list(statuses) or None)
    else:
        if not collections:
            raise click.UsageError("--dataset needs the collections to search (-c COLLECTION)")
        refs = butler.query_datasets(dataset_type, collections=list(collections), where=where, data_id=data_id or None)
        records = []
        for ref in refs:
            record = butler.provenance(ref)
            if record is not None and (task is None or record["task"] == task) \
                    and (not statuses or record["status"] in statuses) and (run is None or record["run"] == run):
                records.append({**record, "dataset": str(ref.id)})
    rows = [_row(r) for r in records]
    columns = ["task", "status", "data_id", "run", "host", "worker", "start", "end", "seconds", "inputs", "outputs",
               "error"]
    if dataset_type is not None:
        columns.insert(0, "dataset")
    print_rows(rows, columns, fmt, empty="no provenance records match")


def _row(record: dict[str, Any]) -> dict[str, Any]:
    start, end = record.get("start_ns"), record.get("end_ns")
    row = dict(record)
    row["data_id"] = " ".join(f"{k}={v}" for k, v in record["data_id"].items())
    row["start"], row["end"] = (datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).isoformat(timespec="milliseconds")
                                if ns else None for ns in (start, end))
    row["seconds"] = round((end - start) / 1e9, 3) if start and end else None
    row["inputs"] = len(record.get("inputs") or ())
    row["outputs"] = len(record.get("outputs") or ()) if "outputs" in record else None
    error = record.get("error") or ""
    row["error"] = error.splitlines()[0][:200] if error else None
    return row
