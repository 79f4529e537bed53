"""Registered dataset types, cached in memory (the table is small), and their tags tables."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from .._dataset_type import DatasetType, split_component
from ..dimensions import DimensionGroup
from ..errors import ConflictError, DatasetTypeError
from ._database import Database
from ._schema import RegistrySchema

__all__ = ["DatasetTypeManager", "DatasetTypeRecord"]


@dataclass(frozen=True, slots=True)
class DatasetTypeRecord:
    """A registered dataset type with its database id, dimension group and tags table."""

    id: int
    dataset_type: DatasetType
    group: DimensionGroup
    tags: sa.Table


class DatasetTypeManager:
    def __init__(self, db: Database, schema: RegistrySchema):
        self._db = db
        self._schema = schema
        self._table = schema.dataset_type
        self._by_name: dict[str, DatasetTypeRecord] | None = None
        self._by_id: dict[int, DatasetTypeRecord] = {}

    def refresh(self) -> None:
        t = self._table
        universe = self._schema.universe
        by_name: dict[str, DatasetTypeRecord] = {}
        with self._db.transaction() as conn:
            rows: Sequence[tuple[int, str, str, str, bool]] = conn.execute(
                sa.select(t.c.dataset_type_id, t.c.name, t.c.dimensions, t.c.storage_class, t.c.is_calibration)
            ).all()
        for id_, name, dims, sc, calib in rows:
            dt = DatasetType(name, dims.split(",") if dims else (), sc, is_calibration=bool(calib))
            group = dt.group(universe)
            by_name[name] = DatasetTypeRecord(id_, dt, group, self._schema.tags_table(group))
        self._by_name = by_name
        self._by_id = {r.id: r for r in by_name.values()}

    @property
    def _names(self) -> dict[str, DatasetTypeRecord]:
        if self._by_name is None:
            self.refresh()
        assert self._by_name is not None
        return self._by_name

    def find(self, name: str) -> DatasetTypeRecord | None:
        rec = self._names.get(name)
        if rec is None:
            self.refresh()
            rec = self._names.get(name)
        return rec

    def get(self, name: str) -> DatasetTypeRecord:
        parent, _component = split_component(name)
        rec = self.find(parent)
        if rec is None:
            close = difflib.get_close_matches(parent, list(self._names), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            known = "" if hint else f"; registered: {sorted(self._names)[:20]}"
            raise DatasetTypeError(f"dataset type {parent!r} is not registered{hint}{known}")
        return rec

    def by_id(self, id_: int) -> DatasetTypeRecord:
        rec = self._by_id.get(id_)
        if rec is None:
            self.refresh()
            rec = self._by_id[id_]
        return rec

    def register(self, dataset_type: DatasetType) -> tuple[DatasetTypeRecord, bool]:
        """Register ``dataset_type`` (idempotent, also when other processes register it at the same
        time); a different definition under its name is a conflict."""
        for attempt in range(3):
            try:
                return self._register(dataset_type)
            except sa.exc.DBAPIError:
                # A concurrent registration of the same type won a race this one lost (on
                # PostgreSQL two concurrent CREATE TABLE of its tags table make the loser fail):
                # what it left is there now.
                if attempt == 2:
                    raise
                self.refresh()
        raise AssertionError("unreachable")

    def _register(self, dataset_type: DatasetType) -> tuple[DatasetTypeRecord, bool]:
        existing = self.find(dataset_type.name)
        if existing is not None:
            if existing.dataset_type != dataset_type:
                raise ConflictError(
                    f"dataset type {dataset_type.name!r} is already registered with a different definition: "
                    f"{existing.dataset_type.describe_difference(dataset_type)} (registered vs new)"
                )
            return existing, False
        group = dataset_type.group(self._schema.universe)
        tags = self._schema.tags_table(group)
        # DDL first, in its own transaction: MySQL commits DDL implicitly anyway.
        try:
            with self._db.transaction(write=True) as conn:
                tags.create(conn, checkfirst=True)
        except sa.exc.DBAPIError:
            # Another process created the same tags table between the check and the CREATE
            # (PostgreSQL raises a unique violation on its catalog): fine if it exists now.
            with self._db.transaction() as conn:
                if not sa.inspect(conn).has_table(tags.name, schema=self._db.namespace):
                    raise
        with self._db.transaction(write=True) as conn:
            conn.execute(
                self._db.insert_ignore(self._table).values(
                    name=dataset_type.name,
                    dimensions=",".join(dataset_type.dimensions),
                    storage_class=dataset_type.storage_class,
                    is_calibration=dataset_type.is_calibration,
                    tag_table=tags.name,
                )
            )
        self.refresh()
        rec = self._names[dataset_type.name]
        if rec.dataset_type != dataset_type:
            raise ConflictError(
                f"dataset type {dataset_type.name!r} was registered concurrently with a different definition: "
                f"{rec.dataset_type.describe_difference(dataset_type)}"
            )
        return rec, True

    def query(self, pattern: str = "*") -> list[DatasetType]:
        self.refresh()
        return [r.dataset_type for n, r in sorted(self._names.items()) if fnmatch.fnmatchcase(n, pattern)]

    def all(self) -> list[DatasetTypeRecord]:
        return list(self._names.values())
