"""Print rows (dicts sharing column names) as an aligned table, JSON or CSV."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

__all__ = ["print_rows"]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ",".join(_cell(v) for v in value)
    return str(value)


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return _cell(value)


def print_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], fmt: str, *,
               empty: str = "no results") -> None:
    """Print ``rows`` restricted to ``columns`` in ``fmt`` ("table", "json" or "csv").

    An empty result prints ``empty`` to stderr for a table (stdout stays empty), ``[]`` for
    JSON and the header line for CSV.
    """
    if fmt == "json":
        click.echo(json.dumps([{c: _json_value(r.get(c)) for c in columns} for r in rows], indent=2))
    elif fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow([_cell(r.get(c)) for c in columns])
        click.echo(buf.getvalue(), nl=False)
    elif not rows:
        click.echo(empty, err=True)
    else:
        cells = [[_cell(r.get(c)) for c in columns] for r in rows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
        click.echo(_line(columns, widths))
        click.echo(_line(["-" * w for w in widths], widths))
        for row in cells:
            click.echo(_line(row, widths))


def _line(values: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()
