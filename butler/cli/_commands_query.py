"""The read-only ``butler query-*`` commands; each prints a table, JSON or CSV."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from ._options import (
    collections_option,
    data_id_option,
    format_option,
    merge_shorthand,
    repo_argument,
    shorthand_options,
    where_option,
)

__all__ = [
    "query_collections",
    "query_data_ids",
    "query_dataset_types",
    "query_datasets",
    "query_dimension_records",
]

_GLOB_CHARS = "*?["


@click.command("query-datasets")
@repo_argument
@click.argument("dataset_type", metavar="TYPE")
@collections_option("Collections to search, in order (repeatable; globs and chains allowed). Default: all "
                    "collections ('*').")
@where_option
@data_id_option
@shorthand_options
@click.option("--find-all", is_flag=True,
              help="List every matching dataset in every collection searched, not only the first found per "
                   "data ID (the default when no collection is a glob).")
@click.option("--show-uri", is_flag=True, help="Add a column with the absolute path of each dataset's file.")
@format_option
def query_datasets(repo: str, dataset_type: str, collections: Sequence[str], where: str | None,
                   data_id: dict[str, Any], instrument: str | None, skymap: str | None, tract: int | None,
                   patch: int | None, find_all: bool, show_uri: bool, fmt: str) -> None:
    """List the datasets of TYPE (a name or a glob of names) in REPO.

    Prints the dataset type, run, data ID values and id of each dataset found.

    \b
    Example:
      butler query-datasets /data/repo calexp -c u/alice/run1 -w "visit > 10 AND band = 'r'"
      butler query-datasets /data/repo 'calexp*' -d instrument=SimCam -d visit=12 --format json
      butler query-datasets /data/repo raw --skymap rings120 --tract 9000 --patch 45
      butler query-datasets /data/repo calexp -c u/alice/run1 --show-uri
    """
    from .._butler import Butler

    data_id = merge_shorthand(data_id, instrument=instrument, skymap=skymap, tract=tract, patch=patch)

    butler = Butler(repo)
    if any(ch in dataset_type for ch in _GLOB_CHARS):
        names = [t.name for t in butler.query_dataset_types(dataset_type)]
    else:
        butler.get_dataset_type(dataset_type)  # an unknown name is an error, not an empty result
        names = [dataset_type]
    colls: Sequence[str] = list(collections) or ["*"]
    if not collections and not butler.query_collections():
        names = []  # nothing to search: '*' would be an error
    find_first = False if find_all else None
    rows: list[dict[str, Any]] = []
    columns: list[str] = ["type", "run"]
    for name in names:
        refs = butler.query_datasets(name, collections=colls, where=where, data_id=data_id, find_first=find_first)
        dims = list(butler.get_dataset_type(name).group(butler.universe).required)
        columns += [d for d in dims if d not in columns]
        uris = butler.get_uris(refs) if show_uri else [None] * len(refs)
        for ref, uri in zip(refs, uris):
            row: dict[str, Any] = {"type": ref.dataset_type.name, "run": ref.run}
            row.update(ref.data_id.to_dict())
            row["id"] = str(ref.id)
            row["uri"] = uri
            rows.append(row)
    columns.append("id")
    if show_uri:
        columns.append("uri")
    from ._output import print_rows

    print_rows(rows, columns, fmt, empty="no datasets found")


@click.command("query-data-ids")
@repo_argument
@click.argument("dimensions", metavar="DIMENSION...", nargs=-1, required=True)
@where_option
@data_id_option
@shorthand_options
@click.option("--datasets", multiple=True, metavar="TYPE",
              help="Only data IDs for which a dataset of this type exists in --collections (repeatable).")
@collections_option("Collections searched for --datasets (repeatable; globs and chains allowed). Default: all "
                    "collections ('*').")
@format_option
def query_data_ids(repo: str, dimensions: Sequence[str], where: str | None, data_id: dict[str, Any],
                   instrument: str | None, skymap: str | None, tract: int | None, patch: int | None,
                   datasets: Sequence[str], collections: Sequence[str], fmt: str) -> None:
    """List the data IDs of DIMENSION... that exist in REPO.

    Prints the required dimensions and the dimensions they imply (e.g. band for visit).

    \b
    Example:
      butler query-data-ids /data/repo visit detector -d instrument=SimCam -w "band = 'r'"
      butler query-data-ids /data/repo visit --datasets calexp -c u/alice/run1
      butler query-data-ids /data/repo visit detector --skymap rings120 --tract 9000 --patch 45
    """
    from .._butler import Butler
    from ._output import print_rows

    data_id = merge_shorthand(data_id, instrument=instrument, skymap=skymap, tract=tract, patch=patch)

    butler = Butler(repo)
    if datasets and not collections and not butler.query_collections():
        for name in datasets:
            butler.get_dataset_type(name)  # an unknown name is still an error
        print_rows([], [], fmt, empty="no data IDs found")
        return
    data_ids = butler.query_data_ids(
        list(dimensions), where=where, data_id=data_id, datasets=list(datasets) or None,
        collections=(list(collections) or ["*"]) if datasets else None,
    )
    group = butler.universe.group(list(dimensions))
    columns = list(group.required) + list(group.implied)
    print_rows([d.to_dict(implied=True) for d in data_ids], columns, fmt, empty="no data IDs found")


@click.command("query-dimension-records")
@repo_argument
@click.argument("element")
@where_option
@data_id_option
@click.option("--regions", is_flag=True, help="Also print the region column (long).")
@format_option
def query_dimension_records(repo: str, element: str, where: str | None, data_id: dict[str, Any], regions: bool,
                            fmt: str) -> None:
    """List the records of the dimension ELEMENT (e.g. visit, detector) in REPO.

    \b
    Example:
      butler query-dimension-records /data/repo visit -d instrument=SimCam -w "visit.exposure_time > 10"
    """
    from .._butler import Butler
    from ._output import print_rows

    butler = Butler(repo)
    records = butler.query_dimension_records(element, where=where, data_id=data_id)
    columns = [c for c in butler.universe[element].record_fields if regions or c != "region"]
    print_rows([r.to_dict() for r in records], columns, fmt, empty=f"no {element} records found")


@click.command("query-collections")
@repo_argument
@click.argument("pattern", metavar="[GLOB]", default="*")
@click.option("--type", "-t", "types", multiple=True, type=click.Choice(["RUN", "TAGGED", "CHAINED", "CALIBRATION"],
              case_sensitive=False), help="Only collections of this type (repeatable).")
@format_option
def query_collections(repo: str, pattern: str, types: Sequence[str], fmt: str) -> None:
    """List the collections of REPO whose names match GLOB (default: all).

    Prints name, type, owner (for RUNs) and the ordered children of CHAINED collections.

    \b
    Example:
      butler query-collections /data/repo 'u/alice/*' --type RUN
    """
    from .._butler import Butler
    from ..registry._collections import CollectionType
    from ._output import print_rows

    butler = Butler(repo)
    reader = butler.reader
    wanted = [CollectionType[t.upper()] for t in types] or None
    rows = []
    for rec in reader.query_collections(pattern, wanted):
        children = reader.chain_children(rec.name) if rec.type == CollectionType.CHAINED else None
        rows.append({"name": rec.name, "type": rec.type.name, "owner": rec.owner, "children": children})
    print_rows(rows, ["name", "type", "owner", "children"], fmt, empty="no collections found")


@click.command("query-dataset-types")
@repo_argument
@click.argument("pattern", metavar="[GLOB]", default="*")
@format_option
def query_dataset_types(repo: str, pattern: str, fmt: str) -> None:
    """List the dataset types registered in REPO whose names match GLOB (default: all).

    \b
    Example:
      butler query-dataset-types /data/repo 'calexp*'
    """
    from .._butler import Butler
    from ._output import print_rows

    butler = Butler(repo)
    rows = [{"name": t.name, "dimensions": list(t.dimensions), "storage_class": t.storage_class}
            for t in butler.query_dataset_types(pattern)]
    print_rows(rows, ["name", "dimensions", "storage_class"], fmt, empty="no dataset types found")
