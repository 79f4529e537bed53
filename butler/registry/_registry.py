"""The registry: the SQL database that names, finds and relates every dataset of a repository.

Opening a registry reads one small table (``butler_attributes``); collections and dataset
types are loaded on first use and cached; datasets and dimension records are always queried,
so datasets written by other processes are visible at once.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from ..dimensions import DimensionUniverse
from ..errors import ButlerError, RegistryConnectionError, RepositoryNotFoundError
from ._collections import CollectionManager
from ._database import Database
from ._dataset_types import DatasetTypeManager
from ._datasets import DatasetManager
from ._dimension_records import DimensionRecordManager
from ._query import QueryBuilder
from ._schema import SCHEMA_VERSION, RegistrySchema

__all__ = ["Registry"]

_OPENED: dict[tuple[str, str | None], tuple[str, dict[str, str]]] = {}


class Registry:
    """Managers for collections, dataset types, dimension records and datasets over one database."""

    def __init__(self, db: Database, universe: DimensionUniverse, attributes: Mapping[str, str]):
        self.db = db
        self.universe = universe
        self.attributes = dict(attributes)
        self._instruments: dict[str, dict[str, Any]] | None = None
        self.schema = RegistrySchema(universe, db.namespace)
        self.collections = CollectionManager(db, self.schema)
        self.dataset_types = DatasetTypeManager(db, self.schema)
        self.records = DimensionRecordManager(db, self.schema)
        self.datasets = DatasetManager(db, self.schema, self.dataset_types, self.collections, self.records)
        self.query_builder = QueryBuilder(self.schema)

    @classmethod
    def create(cls, db: Database, universe: DimensionUniverse, extra: Mapping[str, str] | None = None) -> Registry:
        """Create all static tables and record the universe and schema version."""
        db.create_namespace()
        schema = RegistrySchema(universe, db.namespace)
        attributes = {
            "schema_version": str(SCHEMA_VERSION),
            "universe": universe.text,
            "universe_version": str(universe.version),
            **(extra or {}),
        }
        with db.transaction(write=True) as conn:
            existing = sa.inspect(conn).has_table("butler_attributes", schema=db.namespace)
            if existing:
                raise ButlerError(
                    f"the database {db.safe_url} (namespace {db.namespace!r}) already holds a butler registry; "
                    "use another namespace or open that repository instead"
                )
        schema.metadata.create_all(db.engine, tables=schema.static_tables())
        with db.transaction(write=True) as conn:
            conn.execute(schema.attributes.insert(), [{"name": k, "value": v} for k, v in attributes.items()])
        return cls(db, universe, attributes)

    @classmethod
    def open(cls, db: Database) -> Registry:
        """Open an existing registry with one small query."""
        key = (db.url, db.namespace)
        try:
            with db.transaction() as conn:
                t = RegistrySchema.attributes_table(db.namespace)
                rows = dict(conn.execute(sa.select(t.c.name, t.c.value)).all())
        except RegistryConnectionError:
            raise
        except sa.exc.OperationalError as err:
            raise RepositoryNotFoundError(
                f"no butler registry in {db.safe_url} (namespace {db.namespace!r}): {err.orig}"
            ) from None
        except sa.exc.ProgrammingError as err:
            raise RepositoryNotFoundError(
                f"no butler registry in {db.safe_url} (namespace {db.namespace!r}): {err.orig}"
            ) from None
        if int(rows.get("schema_version", -1)) != SCHEMA_VERSION:
            raise ButlerError(
                f"registry schema version {rows.get('schema_version')} is not supported by this butler "
                f"(version {SCHEMA_VERSION})"
            )
        universe = DimensionUniverse.from_text(rows["universe"])
        _OPENED[key] = (rows["universe"], rows)
        return cls(db, universe, rows)

    def refresh(self) -> None:
        """Reload cached collections and dataset types (to see what other processes added)."""
        self.collections.refresh()
        self.dataset_types.refresh()

    def refresh_attributes(self) -> None:
        t = self.schema.attributes
        with self.db.transaction() as conn:
            self.attributes = dict(conn.execute(sa.select(t.c.name, t.c.value)).all())
        self._instruments = None

    @property
    def instruments(self) -> dict[str, dict[str, Any]]:
        """Registered instruments' digest, class, aliases and templates (parsed once)."""
        if self._instruments is None:
            self._instruments = {
                k.split(":", 1)[1]: json.loads(v) for k, v in self.attributes.items() if k.startswith("instrument:")
            }
        return self._instruments

    def set_attribute(self, name: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        t = self.schema.attributes
        with self.db.transaction(write=True) as conn:
            conn.execute(t.delete().where(t.c.name == name))
            conn.execute(t.insert().values(name=name, value=text))
        self.attributes[name] = text
        self._instruments = None

    def table_row_counts(self, tables: Iterable[sa.Table]) -> dict[str, int]:
        with self.db.transaction() as conn:
            return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in tables}
