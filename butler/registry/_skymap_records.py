"""The SQL of skymap registration: the skymap row, tract and patch records and their spatial index.

``butler._skymaps`` computes the geometry (regions, pixel envelopes) with numpy; this manager
writes it with the driver's ``executemany`` (`Database.bulk_insert`: millions of rows for a
full-sky skymap), optionally with the ``pix`` indexes dropped for the load and rebuilt once
(SQLite only, see `bulk_load`), and retries a registration that lost a race to another process
registering the same tracts (`register`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa

from ._database import Database
from ._schema import RegistrySchema

__all__ = ["DEFER_INDEXES_PATCHES", "SkymapRecordManager"]

DEFER_INDEXES_PATCHES = 200_000  # registering at least this many patches rebuilds the pixel indexes once


class SkymapRecordManager:
    """Reads and bulk-writes the ``skymap``, ``tract`` and ``patch`` tables and their spatial index."""

    def __init__(self, db: Database, schema: RegistrySchema):
        self._db = db
        self._schema = schema
        dbapi = db.engine.dialect.loaded_dbapi  # bulk inserts raise the driver's IntegrityError
        self._integrity_errors: tuple[type[BaseException], ...] = (
            sa.exc.IntegrityError, *((dbapi.IntegrityError,) if hasattr(dbapi, "IntegrityError") else ()))

    def register(self, work: Callable[[sa.Connection], int], *, attempts: int = 3) -> int:
        """Run ``work(conn)`` in one write transaction and return its count; when another process
        registered the same skymap or tracts meanwhile (an integrity error on PostgreSQL and MySQL;
        SQLite write transactions are serialised), run it again: it then skips what the other
        added. After a load that added something the planner's statistics are refreshed."""
        for attempt in range(attempts):
            try:
                with self._db.transaction(write=True) as conn:
                    added = work(conn)
                if added:
                    self.analyze()
                return added
            except self._integrity_errors:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def hash_of(self, conn: sa.Connection, name: str) -> str | None:
        """The configuration digest of skymap ``name``, or None when it is not registered."""
        sk = self._schema.elements["skymap"]
        row = conn.execute(sa.select(sk.c.hash).where(sk.c.name == name)).first()
        return None if row is None else row[0]

    def insert_skymap(self, conn: sa.Connection, *, name: str, digest: str, tract_max: int, patch_nx_max: int,
                      patch_ny_max: int, config: str) -> None:
        """The skymap's own record (its stored configuration rebuilds it anywhere)."""
        conn.execute(self._schema.elements["skymap"].insert().values(
            name=name, hash=digest, tract_max=tract_max, patch_nx_max=patch_nx_max, patch_ny_max=patch_ny_max,
            config=config))

    def tract_ids(self, conn: sa.Connection, name: str) -> list[int]:
        """The ids of the tracts of skymap ``name`` registered so far."""
        t = self._schema.elements["tract"]
        return list(conn.execute(sa.select(t.c.id).where(t.c.skymap == name)).scalars().all())

    def insert_tracts(self, conn: sa.Connection, rows: Sequence[tuple[Any, ...]],
                      index_rows: Sequence[tuple[Any, ...]]) -> None:
        """Tract records ``(skymap, id, region)`` and their index rows ``(skymap, id, pix)``, in bulk."""
        schema = self._schema
        self._db.bulk_insert(conn, schema.elements["tract"], ["skymap", "id", "region"], rows)
        self._db.bulk_insert(conn, schema.skypix["tract"], ["skymap", "id", "pix"], index_rows)

    def insert_patches(self, conn: sa.Connection, rows: Sequence[tuple[Any, ...]],
                       index_rows: Sequence[tuple[Any, ...]]) -> None:
        """Patch records ``(skymap, tract, id, cell_x, cell_y, region)`` and their index rows
        ``(skymap, tract, id, pix)``, in bulk."""
        schema = self._schema
        self._db.bulk_insert(conn, schema.elements["patch"], ["skymap", "tract", "id", "cell_x", "cell_y", "region"],
                             rows)
        self._db.bulk_insert(conn, schema.skypix["patch"], ["skymap", "tract", "id", "pix"], index_rows)

    @contextlib.contextmanager
    def bulk_load(self, conn: sa.Connection, new_patches: int) -> Iterator[None]:
        """Drop the ``pix`` indexes of the tract/patch spatial index for a big load, rebuild them at
        the end (SQLite only).

        Inserting millions of index rows in (tract, patch) order appends to their primary keys but
        scatters inserts over a ``pix`` index; building that index once at the end is about 40%
        cheaper. The drop and the rebuild are in the registration's transaction, so readers (WAL)
        never see the table without its index. Only when the table holds fewer rows than are
        coming, else rebuilding would cost more than it saves. Never on MySQL (DDL commits) nor
        PostgreSQL (DROP INDEX locks out readers until the transaction ends).
        """
        deferred = self._drop_pix_indexes(conn, new_patches)
        yield
        for index in deferred:
            index.create(conn)

    def _drop_pix_indexes(self, conn: sa.Connection, new_patches: int) -> list[sa.Index]:
        if self._db.dialect != "sqlite" or new_patches < DEFER_INDEXES_PATCHES:
            return []
        skypix = self._schema.skypix
        existing = conn.execute(sa.select(sa.func.count()).select_from(skypix["patch"])).scalar()
        if existing is not None and existing > 4 * new_patches:  # about 4-5 index rows per patch
            return []
        indexes = [i for name in ("tract", "patch") for i in skypix[name].indexes]
        for index in indexes:
            index.drop(conn)
        return indexes

    def analyze(self) -> None:
        """Refresh the planner's statistics of the tract/patch tables and their index (after a load)."""
        schema = self._schema
        self._db.analyze([schema.elements["tract"], schema.elements["patch"], schema.skypix["tract"],
                          schema.skypix["patch"]])
