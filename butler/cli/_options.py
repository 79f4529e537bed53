"""Options shared by several commands and the parsing of their values."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

__all__ = [
    "collections_option",
    "data_id_option",
    "format_option",
    "merge_shorthand",
    "parse_data_id",
    "repo_argument",
    "shorthand_options",
    "where_option",
]

F = TypeVar("F", bound=Callable[..., Any])

_INT = re.compile(r"[+-]?\d+")


def parse_data_id(items: Sequence[str]) -> dict[str, Any]:
    """Turn ``("instrument=SimCam", "visit=12")`` into ``{"instrument": "SimCam", "visit": 12}``.

    Values that look like integers become ints; the butler validates keys and values.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not of the form key=value (e.g. visit=12)",
                                     param_hint="'--data-id'")
        value = value.strip()
        if key in out:
            raise click.BadParameter(f"{key!r} is given more than once", param_hint="'--data-id'")
        out[key] = int(value) if _INT.fullmatch(value) else value
    return out


def _data_id_callback(ctx: click.Context, param: click.Parameter, value: Sequence[str]) -> dict[str, Any]:
    return parse_data_id(value)


def repo_argument(f: F) -> F:
    return click.argument("repo", type=click.Path(file_okay=False))(f)


def where_option(f: F) -> F:
    return click.option(
        "--where", "-w", default=None, metavar="EXPR",
        help="A where-expression on dimensions and record fields, e.g. \"visit > 10 AND band = 'r'\".",
    )(f)


def data_id_option(f: F) -> F:
    return click.option(
        "--data-id", "-d", "data_id", multiple=True, callback=_data_id_callback, metavar="KEY=VALUE",
        help="Constrain a data ID key (repeatable), e.g. -d instrument=SimCam -d visit=12.",
    )(f)


def collections_option(help: str) -> Callable[[F], F]:
    def decorator(f: F) -> F:
        return click.option("--collections", "-c", multiple=True, metavar="COLLECTION", help=help)(f)

    return decorator


def format_option(f: F) -> F:
    return click.option(
        "--format", "-f", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
        help="Output format.",
    )(f)


SHORTHAND_KEYS = ("instrument", "skymap", "tract", "patch")


def shorthand_options(f: F) -> F:
    """``--instrument``, ``--skymap``, ``--tract``, ``--patch``: shorthands for ``--data-id KEY=VALUE``."""
    f = click.option("--patch", type=int, default=None, metavar="ID", help="Shorthand for -d patch=ID.")(f)
    f = click.option("--tract", type=int, default=None, metavar="ID", help="Shorthand for -d tract=ID.")(f)
    f = click.option("--skymap", default=None, metavar="NAME", help="Shorthand for -d skymap=NAME.")(f)
    return click.option("--instrument", "-i", default=None, metavar="NAME",
                        help="Shorthand for -d instrument=NAME.")(f)


def merge_shorthand(data_id: dict[str, Any], **shorthand: Any) -> dict[str, Any]:
    """``data_id`` plus the shorthand options that were given; the same key given twice must agree."""
    out = dict(data_id)
    for key, value in shorthand.items():
        if value is None:
            continue
        if key in out and out[key] != value:
            raise click.BadParameter(f"--{key} {value} disagrees with --data-id {key}={out[key]}",
                                     param_hint=f"'--{key}'")
        out[key] = value
    return out
