"""Coadd flavors: which kind of coadd a data ID names (``deep``, ``bestSeeing``, ``nightly-20261124``...).

The ``flavor`` dimension is part of coadd data IDs (``skymap, tract, patch, band, flavor``); its
records carry a ``kind`` from `FLAVOR_KINDS`, the night (``day_obs``, YYYYMMDD) for nightly
coadds, and a description. Queries can select on them::

    b.register_flavors(default_flavors(nights=[20261124, 20261125]))
    b.query_datasets("coadd", skymap="rings120", tract=9000,
                     where="flavor.kind = 'nightly' AND flavor.day_obs = 20261124")

A flavor is given as a record (a mapping with ``name``, ``kind``, ``day_obs``, ``description``)
or as a string: a kind (``"deep"``) names the flavor of that kind, ``"nightly-YYYYMMDD"`` a
nightly flavor. Registering is idempotent; a different definition under an existing name is a
``ConflictError`` naming the difference.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConflictError, DataIdError

if TYPE_CHECKING:
    from .registry._registry import Registry

__all__ = ["FLAVOR_KINDS", "default_flavors", "flavor_record", "nightly_flavor", "register_flavors"]

FLAVOR_KINDS: dict[str, str] = {
    "deep": "all usable visits",
    "bestSeeing": "the visits with the best seeing (e.g. the best third)",
    "goodSeeing": "visits with seeing under a threshold (templates for difference imaging)",
    "nightly": "the visits of one night; the record's day_obs is that night (YYYYMMDD)",
    "chi2": "a chi-squared detection image combining bands",
}
"""The kinds a flavor record may have, with what each means (``nightly`` needs ``day_obs``)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NIGHTLY = re.compile(r"nightly-(\d{8})")
_FIELDS = ("name", "kind", "day_obs", "description")


def _check_day_obs(value: Any, where: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DataIdError(f"{where}: day_obs must be an integer YYYYMMDD, got {value!r}")
    try:
        datetime.date(value // 10000, value // 100 % 100, value % 100)
    except ValueError:
        raise DataIdError(f"{where}: day_obs {value} is not a date of the form YYYYMMDD") from None
    if not 19000101 <= value <= 29991231:
        raise DataIdError(f"{where}: day_obs {value} is not a date of the form YYYYMMDD")
    return value


def flavor_record(flavor: str | Mapping[str, Any]) -> dict[str, Any]:
    """A validated flavor record from a record mapping or a string (a kind, or ``nightly-YYYYMMDD``)."""
    if isinstance(flavor, str):
        match = _NIGHTLY.fullmatch(flavor)
        if match:
            return nightly_flavor(int(match.group(1)))
        if flavor == "nightly":
            raise DataIdError("a nightly flavor needs its night: 'nightly-YYYYMMDD' (e.g. 'nightly-20261124')")
        if flavor not in FLAVOR_KINDS:
            raise DataIdError(f"unknown flavor kind {flavor!r}; kinds: {list(FLAVOR_KINDS)} "
                              "(nightly flavors are named 'nightly-YYYYMMDD')")
        return flavor_record({"kind": flavor})
    if not isinstance(flavor, Mapping):
        raise DataIdError(f"a flavor must be a record (mapping) or a string, got {flavor!r}")
    unknown = sorted(set(flavor) - set(_FIELDS))
    if unknown:
        raise DataIdError(f"unknown flavor field(s) {unknown}; fields are {list(_FIELDS)}")
    kind = flavor.get("kind")
    where = f"flavor {flavor.get('name', kind)!r}"
    if kind not in FLAVOR_KINDS:
        raise DataIdError(f"{where}: unknown kind {kind!r}; kinds: {list(FLAVOR_KINDS)}")
    day_obs = flavor.get("day_obs")
    if kind == "nightly":
        if day_obs is None:
            raise DataIdError(f"{where}: a nightly flavor needs day_obs (the night, YYYYMMDD)")
        day_obs = _check_day_obs(day_obs, where)
    elif day_obs is not None:
        raise DataIdError(f"{where}: only nightly flavors have a day_obs; a {kind!r} flavor has none")
    name = flavor.get("name") or (f"nightly-{day_obs}" if kind == "nightly" else kind)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise DataIdError(f"flavor name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                          "(starting with a letter or digit)")
    match = _NIGHTLY.fullmatch(name)
    if match and (kind != "nightly" or int(match.group(1)) != day_obs):
        raise DataIdError(f"flavor name {name!r} says nightly for {match.group(1)} but the record has "
                          f"kind {kind!r}, day_obs {day_obs!r}")
    description = flavor.get("description")
    if description is None:
        description = (f"visits of the night {day_obs}" if kind == "nightly" else FLAVOR_KINDS[kind])
    if not isinstance(description, str) or len(description) > 256:
        raise DataIdError(f"{where}: description must be a string of at most 256 characters")
    return {"name": name, "kind": kind, "day_obs": day_obs, "description": description}


def nightly_flavor(day_obs: int, *, description: str | None = None) -> dict[str, Any]:
    """The record of the nightly flavor ``nightly-YYYYMMDD`` of one night."""
    return flavor_record({"kind": "nightly", "day_obs": day_obs, "description": description})


def default_flavors(nights: Iterable[int] = ()) -> list[dict[str, Any]]:
    """Records of ``deep``, ``bestSeeing`` and one ``nightly-YYYYMMDD`` flavor per night."""
    records = [flavor_record("deep"), flavor_record("bestSeeing")]
    records += [nightly_flavor(n) for n in dict.fromkeys(nights)]
    return records


def register_flavors(registry: Registry, flavors: Iterable[str | Mapping[str, Any]]) -> int:
    """Insert flavor records (validated first); return how many were new.

    A flavor already registered with the same definition is skipped; with a different one, it
    is a ``ConflictError`` naming the difference, and nothing is written. The caller checks that
    the registry may be written.
    """
    records: dict[str, dict[str, Any]] = {}
    for item in flavors if not isinstance(flavors, (str, Mapping)) else [flavors]:
        record = flavor_record(item)
        previous = records.get(record["name"])
        if previous is not None and previous != record:
            raise ConflictError(f"flavor {record['name']!r} is given twice with different definitions: "
                                f"{_difference(previous, record)}")
        records[record["name"]] = record
    if not records:
        return 0
    with registry.transaction(write=True) as conn:
        rows = registry.records.stored_rows("flavor", list(records), conn)
        for row in rows:
            existing = {k: row[k] for k in _FIELDS}
            if existing != records[row["name"]]:
                raise ConflictError(f"flavor {row['name']!r} is already registered with a different definition: "
                                    f"{_difference(existing, records[row['name']])}")
        new = [r for name, r in records.items() if name not in {row["name"] for row in rows}]
        if new:
            registry.records.insert("flavor", new, conn=conn)
    return len(new)


def _difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    return "; ".join(f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in _FIELDS if old.get(k) != new.get(k))
