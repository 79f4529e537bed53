"""Whole-registry reads for tests and checkers: every row of every table, and the datasets,
files, collections and certified ranges in a form that compares across processes.

These scan whole tables: they are for test repositories and crash tests (`butler.testing`), not
for production paths.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

if TYPE_CHECKING:
    from ._registry import Registry

__all__ = ["RegistryContents", "registry_contents", "table_rows"]


class RegistryContents(NamedTuple):
    """What `registry_contents` read, in one transaction."""

    datasets: dict[uuid.UUID, tuple[str, str]]
    """dataset id -> (dataset type name, run name)"""
    files: dict[uuid.UUID, list[tuple[str, str | None]]]
    """dataset id -> [(component, checksum)]"""
    collections: dict[str, int]
    """collection name -> type"""
    calibs: list[tuple[str, uuid.UUID, int, int]]
    """(CALIBRATION collection name, dataset id, begin ns, end ns)"""


def registry_contents(registry: Registry) -> RegistryContents:
    """Every dataset (type and run), file record, collection and certified range, in one snapshot."""
    schema = registry.schema
    d, f, c, t = schema.dataset, schema.file_record, schema.collection, schema.dataset_type
    with registry.db.transaction() as conn:
        datasets = {row[0]: (row[1], row[2]) for row in conn.execute(
            sa.select(d.c.dataset_id, t.c.name, c.c.name)
            .select_from(d.join(t, t.c.dataset_type_id == d.c.dataset_type_id).join(c, c.c.collection_id == d.c.run_id)))}
        files: dict[Any, list[tuple[str, str | None]]] = {}
        for row in conn.execute(sa.select(f.c.dataset_id, f.c.component, f.c.checksum)):
            files.setdefault(row[0], []).append((row[1], row[2]))
        collections = {row[0]: int(row[1]) for row in conn.execute(sa.select(c.c.name, c.c.type))}
        k = schema.calibs
        calib_rows: Sequence[tuple[Any, ...]] = conn.execute(
            sa.select(c.c.name, k.c.dataset_id, k.c.begin_ns, k.c.end_ns)
            .select_from(k.join(c, c.c.collection_id == k.c.collection_id))).all()
        calibs: list[tuple[str, uuid.UUID, int, int]] = [tuple(row) for row in calib_rows]
    return RegistryContents(datasets, files, collections, calibs)


def table_rows(registry: Registry) -> dict[str, list[tuple[str, ...]]]:
    """Every row of every table of the registry's namespace (as the database has them, reflected:
    tables this butler does not know too), as sorted tuples of strings: snapshots that tests compare
    before and after a failing call."""
    db = registry.db
    tables: dict[str, list[tuple[str, ...]]] = {}
    with db.transaction() as conn:
        names = sa.inspect(conn).get_table_names(schema=db.namespace)
        md = sa.MetaData(schema=db.namespace)
        for name in sorted(names):
            table = sa.Table(name, md, autoload_with=conn)
            rows = conn.execute(sa.select(table)).all()
            tables[name] = sorted(tuple(str(v) for v in row) for row in rows)
    return tables
