"""The registry: the SQL database that names, finds and relates every dataset of a repository.

Opening a registry reads one small table (``butler_attributes``); collections and dataset
types are loaded on first use and cached; datasets and dimension records are always queried,
so datasets written by other processes are visible at once.

Import cost belongs to ``from butler import Butler``, not to the first open: importing this
module imports SQLAlchemy and the SQLite dialect (the default backend). The query builder and
its where-expression parser are imported by the first query, which is the first to need them.
The universe is stored twice at creation, as its YAML text (the identity of the universe) and as
JSON (``universe_json``, with the digest of that text), so that opening parses it with ``json``
instead of importing PyYAML.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3  # noqa: F401 - the default backend's driver, imported by the first open otherwise
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import sqlalchemy as sa
import sqlalchemy.dialects.sqlite  # the default backend; create_engine would import it at open

from ..dimensions import DimensionUniverse
from ..errors import ButlerError, RegistryConnectionError, RepositoryConfigError, RepositoryNotFoundError
from ._bulk_reads import BulkReadManager
from ._calibrations import CalibrationManager
from ._collections import GENERATION_ATTRIBUTE, CollectionManager
from ._data_ids import DataIdResolver
from ._database import Database
from ._dataset_types import DatasetTypeManager
from ._datasets import DatasetManager
from ._dimension_records import DimensionRecordManager
from ._journal import FileJournal
from ._provenance import ProvenanceManager
from ._schema import SCHEMA_MINOR, SCHEMA_VERSION, RegistrySchema
from ._skymap_records import SkymapRecordManager

if TYPE_CHECKING:
    import uuid

    from .._dataset_ref import DatasetRef
    from .._dataset_type import DatasetType
    from ..dimensions import DataCoordinate, DimensionRecord
    from ._collections import CollectionRecord, CollectionType
    from ._datasets import FileRecord, FoundDataset
    from ._query import QueryBuilder
    from ._query_runner import QueryRunner

__all__ = ["Connection", "Registry"]

Connection: TypeAlias = sa.Connection
"""A registry transaction (`Registry.transaction`), passed to managers' methods as ``conn`` so that
several of them commit together; outside ``butler/registry/`` only its name is used."""

_PARTS = frozenset({"schema", "collections", "dataset_types", "records", "datasets", "journal", "calibrations",
                    "provenance", "skymaps", "bulk_reads"})

_OPENED: dict[tuple[str, str | None], tuple[str, dict[str, str]]] = {}


class Registry:
    """Managers for collections, dataset types, dimension records and datasets over one database.

    The table definitions (``schema``) and the managers are built on first use, together and
    under a lock, so opening a registry costs one small query and no schema construction (a few
    ms, with the MySQL type variants' import); the query builder is built by the first query.
    """

    schema: RegistrySchema
    collections: CollectionManager
    dataset_types: DatasetTypeManager
    records: DimensionRecordManager
    datasets: DatasetManager
    journal: FileJournal
    calibrations: CalibrationManager
    provenance: ProvenanceManager
    skymaps: SkymapRecordManager
    bulk_reads: BulkReadManager
    query_builder: QueryBuilder
    queries: QueryRunner

    def __init__(self, db: Database, universe: DimensionUniverse, attributes: Mapping[str, str],
                 schema: RegistrySchema | None = None):
        self.db = db
        self.universe = universe
        self.attributes = dict(attributes)
        self._instruments: dict[str, dict[str, Any]] | None = None
        self._lock = threading.RLock()
        self.data_ids = DataIdResolver(self)
        if schema is not None:
            self._build(schema)

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not set yet: the lazily built parts.
        if name in _PARTS:
            self._build()
        elif name == "query_builder":
            from ._query import QueryBuilder

            schema = self.schema  # built first: _build takes the lock too
            with self._lock:
                if "query_builder" not in self.__dict__:
                    self.__dict__["query_builder"] = QueryBuilder(schema)
        elif name == "queries":
            from ._query_runner import QueryRunner

            builder = self.query_builder
            with self._lock:
                if "queries" not in self.__dict__:
                    self.__dict__["queries"] = QueryRunner(self.db, self.schema, builder, self.datasets,
                                                           self.records)
        else:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return self.__dict__[name]

    def _build(self, schema: RegistrySchema | None = None) -> None:
        with self._lock:
            if "datasets" in self.__dict__:
                return
            db = self.db
            schema = schema or RegistrySchema(self.universe, db.namespace)
            collections = CollectionManager(db, schema)
            dataset_types = DatasetTypeManager(db, schema)
            records = DimensionRecordManager(db, schema)
            datasets = DatasetManager(db, schema, dataset_types, collections, records)
            # "datasets" last: its presence says that every part is there.
            journal = FileJournal(db, schema, self.attributes, upgrade=self.upgrade_for_writes)
            self.__dict__.update(schema=schema, collections=collections, dataset_types=dataset_types,
                                 records=records, journal=journal,
                                 calibrations=CalibrationManager(db, schema, collections, datasets.files_of),
                                 provenance=ProvenanceManager(db, schema, collections, self.quantum_columns),
                                 skymaps=SkymapRecordManager(db, schema),
                                 bulk_reads=BulkReadManager(db, schema, collections))
            self.__dict__["datasets"] = datasets

    @classmethod
    def create(cls, db: Database, universe: DimensionUniverse, extra: Mapping[str, str] | None = None) -> Registry:
        """Create all static tables and record the universe and schema version."""
        db.create_namespace()
        schema = RegistrySchema(universe, db.namespace)
        attributes = {
            "schema_version": str(SCHEMA_VERSION),
            "universe": universe.text,
            "universe_version": str(universe.version),
            **_universe_json(universe),
            "schema_minor": str(SCHEMA_MINOR),
            GENERATION_ATTRIBUTE: "0",  # updated by changes that invalidate collection caches
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
        return cls(db, universe, attributes, schema)

    @classmethod
    def open(cls, db: Database) -> Registry:
        """Open an existing registry with one small query.

        Writes nothing: a SQLite registry file that is missing is a `RepositoryConfigError` (SQLite
        would create an empty one), as is one that is not a SQLite database or holds no registry.
        """
        key = (db.url, db.namespace)
        sqlite_path = db.sqlite_path
        if sqlite_path is not None:
            _check_sqlite_file(sqlite_path)
        try:
            with db.transaction() as conn:
                t = _attributes_table(db.namespace)
                pairs: Sequence[tuple[str, str]] = conn.execute(sa.select(t.c.name, t.c.value)).all()
                rows = dict(pairs)
        except RegistryConnectionError as err:
            if sqlite_path is not None:
                raise RepositoryConfigError(f"cannot open the registry file {sqlite_path}: {err}") from None
            raise
        except sa.exc.DBAPIError as err:
            if sqlite_path is not None:
                raise RepositoryConfigError(
                    f"the registry file {sqlite_path} is not a readable butler registry (corrupted, truncated "
                    f"or not a SQLite database: {err.orig}); restore it from a backup"
                ) from None
            if not isinstance(err, (sa.exc.OperationalError, sa.exc.ProgrammingError)):
                raise
            raise RepositoryNotFoundError(
                f"no butler registry in {db.safe_url} (namespace {db.namespace!r}): {err.orig}"
            ) from None
        version = rows.get("schema_version")
        if version is None or "universe" not in rows:
            raise RepositoryConfigError(
                f"the registry in {sqlite_path or db.safe_url} (namespace {db.namespace!r}) lacks its "
                f"{'schema_version' if version is None else 'universe'} attribute: it is damaged or not a butler registry"
            )
        if version != str(SCHEMA_VERSION):
            raise ButlerError(
                f"registry schema version {rows.get('schema_version')} is not supported by this butler "
                f"(version {SCHEMA_VERSION})"
            )
        try:
            universe = _universe_from_attributes(rows)
        except (ValueError, KeyError, TypeError) as err:
            raise RepositoryConfigError(
                f"the dimension universe stored in the registry {sqlite_path or db.safe_url} cannot be read: {err}"
            ) from None
        _OPENED[key] = (rows["universe"], rows)
        return cls(db, universe, rows)

    @property
    def schema_minor(self) -> int:
        """Additions to schema version 1 this registry has (2: the file journal, the path index of
        file records and ``quantum.worker``; 3: a covering index of quantum outputs by quantum; 4: the
        collections generation row);
        older repositories get them on their first write."""
        return int(self.attributes.get("schema_minor", "1"))

    def upgrade_for_writes(self) -> None:
        """Add what this repository predates (see `schema_minor`) before the first write: the
        additions are tables, indexes and a nullable column, so old readers keep working. Reads
        never upgrade (a read-only open writes nothing); they work without the additions. Processes
        upgrading at once are serialised (`Database.schema_lock`) and each re-checks inside."""
        if self.schema_minor >= SCHEMA_MINOR:
            return
        with self._lock:
            if self.schema_minor >= SCHEMA_MINOR:
                return
            schema, db = self.schema, self.db
            attrs = schema.attributes
            with db.schema_lock() as conn:
                current = conn.execute(sa.select(attrs.c.value).where(attrs.c.name == "schema_minor")).scalar()
                if int(current or 1) < SCHEMA_MINOR:
                    self._add_minor_changes(conn)
                    conn.execute(attrs.delete().where(attrs.c.name == "schema_minor"))
                    conn.execute(attrs.insert().values(name="schema_minor", value=str(SCHEMA_MINOR)))
                    # An existing row, so that concurrent cache invalidations only UPDATE it (an
                    # update-or-insert of a missing row deadlocks on InnoDB's gap locks).
                    conn.execute(db.insert_ignore(attrs).values(name=GENERATION_ATTRIBUTE, value="0"))
            self.attributes["schema_minor"] = str(SCHEMA_MINOR)
            self.journal.mark_ready()

    def _add_minor_changes(self, conn: sa.Connection) -> None:
        """The DDL of schema minors 2 and 3, each step skipped if already there."""
        schema, db = self.schema, self.db
        schema.file_journal.create(conn, checkfirst=True)
        schema.file_record_path_index.create(conn, checkfirst=True)
        q = schema.quantum
        if "worker" not in {c["name"] for c in sa.inspect(conn).get_columns(q.name, schema=db.namespace)}:
            prep = conn.dialect.identifier_preparer
            ddl = q.c.worker.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {prep.format_table(q)} ADD COLUMN {prep.quote('worker')} {ddl}")
        existing = {i["name"] for i in sa.inspect(conn).get_indexes("quantum_output", schema=db.namespace)}
        if schema.quantum_output_index.name not in existing:
            schema.quantum_output_index.create(conn)

    def quantum_columns(self) -> list[sa.Column[Any]]:
        """The columns of ``quantum`` this repository has (``worker`` since `schema_minor` 2)."""
        q = self.schema.quantum
        return [c for c in q.c if c.name != "worker" or self.schema_minor >= 2]

    @contextlib.contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[Connection]:
        """One transaction of this registry's database, committed on success and rolled back on
        error: callers that group several manager calls atomically pass it to each as ``conn``."""
        with self.db.transaction(write=write) as conn:
            yield conn

    # -- reads of the RegistryReader interface (whole operations, each in its own transaction) ----------
    def dataset_type(self, name: str) -> DatasetType:
        return self.dataset_types.get(name).dataset_type

    def query_dataset_types(self, pattern: str = "*") -> list[DatasetType]:
        return self.dataset_types.query(pattern)

    def collection(self, name: str) -> CollectionRecord:
        return self.collections.get(name)

    def query_collections(self, pattern: str | Sequence[str] = "*",
                          types: Iterable[CollectionType] | None = None) -> list[CollectionRecord]:
        return self.collections.query(pattern, types)

    def chain_children(self, name: str) -> list[str]:
        return self.collections.chain_children(name)

    def resolve_collections(self, collections: str | Sequence[str]) -> list[CollectionRecord]:
        return self.collections.resolve(collections)

    def find_dataset(self, dataset_type: str, data_id: DataCoordinate,
                     collections: str | Sequence[str]) -> FoundDataset | None:
        type_rec = self.dataset_types.get(dataset_type)
        with self.db.transaction() as conn:  # the search path and the lookup in one snapshot
            return self.datasets.find(conn, type_rec, data_id, self.collections.resolve(collections, conn))

    def find_datasets(self, dataset_type: str, data_ids: Sequence[DataCoordinate],
                      collections: str | Sequence[str]) -> dict[DataCoordinate, DatasetRef]:
        type_rec = self.dataset_types.get(dataset_type)
        with self.db.transaction() as conn:
            return self.datasets.find_many(conn, type_rec, data_ids, self.collections.resolve(collections, conn))

    def query_datasets(self, dataset_type: str | DatasetType, *, collections: Any, where: str | None = None,
                       bind: Mapping[str, Any] | None = None, data_id: Any = None, find_first: bool | None = None,
                       **kwargs: Any) -> list[DatasetRef]:
        from ._query_api import query_datasets

        return query_datasets(self, dataset_type, collections=collections, where=where, bind=bind, data_id=data_id,
                              find_first=find_first, **kwargs)

    def query_data_ids(self, dimensions: str | Iterable[str], *, where: str | None = None,
                       bind: Mapping[str, Any] | None = None, data_id: Any = None,
                       datasets: str | Iterable[str] | None = None, collections: Any = None,
                       **kwargs: Any) -> list[DataCoordinate]:
        from ._query_api import query_data_ids

        return query_data_ids(self, dimensions, where=where, bind=bind, data_id=data_id, datasets=datasets,
                              collections=collections, **kwargs)

    def query_dimension_records(self, element: str, *, where: str | None = None, bind: Mapping[str, Any] | None = None,
                                data_id: Any = None, **kwargs: Any) -> list[DimensionRecord]:
        from ._query_api import query_dimension_records

        return query_dimension_records(self, element, where=where, bind=bind, data_id=data_id, **kwargs)

    def files_of(self, dataset_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[FileRecord]]:
        with self.db.transaction() as conn:
            return self.datasets.files_of(conn, dataset_ids)

    def explain_not_found(self, dataset_type: str, data_id: DataCoordinate, collections: str | Sequence[str]) -> str:
        type_rec = self.dataset_types.get(dataset_type)
        with self.db.transaction() as conn:
            colls = self.collections.resolve(collections, conn)
            message = f"no {dataset_type!r} for {data_id} in collections {[c.name for c in colls]}"
            elsewhere = self.datasets.locate_elsewhere(conn, type_rec, data_id, colls)
            if elsewhere:
                return f"{message}; found in {', '.join(elsewhere)}"
            rows = [data_id.to_dict()]
            for dim in data_id.group.required:
                missing = self.records.missing_keys(self.universe[dim], rows, conn)
                if missing:
                    return f"{message}; {missing}"
        return message

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

    def delete_attribute(self, name: str) -> None:
        """Remove the registry attribute ``name`` (nothing happens if it is not set)."""
        t = self.schema.attributes
        with self.db.transaction(write=True) as conn:
            conn.execute(t.delete().where(t.c.name == name))
        self.attributes.pop(name, None)
        self._instruments = None

    def set_attribute(self, name: str, value: Any) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        t = self.schema.attributes
        with self.db.transaction(write=True) as conn:
            conn.execute(t.delete().where(t.c.name == name))
            conn.execute(t.insert().values(name=name, value=text))
        self.attributes[name] = text
        self._instruments = None

    def attributes_with_prefix(self, prefix: str, conn: sa.Connection | None = None) -> dict[str, str]:
        """The ``butler_attributes`` rows whose names start with ``prefix``, as committed now (or in ``conn``)."""
        if conn is None:
            with self.db.transaction() as c:
                return self.attributes_with_prefix(prefix, c)
        t = self.schema.attributes
        return dict(conn.execute(sa.select(t.c.name, t.c.value).where(t.c.name.startswith(prefix, autoescape=True)))
                    .all())

    def insert_attributes(self, values: Mapping[str, str], conn: sa.Connection) -> None:
        """INSERT attribute rows in ``conn`` (one statement); a name that exists already fails the
        insert on the primary key (see `lost_race`): attributes inserted so are never changed."""
        if values:
            conn.execute(self.schema.attributes.insert(), [{"name": k, "value": v} for k, v in values.items()])

    def table_row_counts(self, tables: Iterable[sa.Table]) -> dict[str, int]:
        with self.db.transaction() as conn:
            return {t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in tables}


def _check_sqlite_file(path: str) -> None:
    """Refuse, before connecting, a registry file that SQLite would create or initialise (missing,
    empty) instead of reporting it: opening must not write anything into a broken repository."""
    try:
        size = os.stat(path).st_size if os.path.isfile(path) else None
    except OSError:
        size = None
    if size is None:
        what = "is a directory, not a file" if os.path.isdir(path) else "is missing"
        raise RepositoryConfigError(
            f"the repository's registry file {path} {what}; the repository cannot be opened without it "
            "(restore it from a backup; nothing was created)"
        )
    if size < 100:  # shorter than a SQLite header: an empty or truncated file, not a registry
        raise RepositoryConfigError(
            f"the repository's registry file {path} is {size} bytes long, too short for a SQLite database "
            "(empty or truncated); restore it from a backup"
        )


def _universe_json(universe: DimensionUniverse) -> dict[str, str]:
    """The ``universe_json`` attribute: the universe's parsed YAML as JSON, with the text's digest."""
    import yaml

    config = yaml.load(universe.text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    text = json.dumps({"digest": _digest(universe.text), "config": config}, separators=(",", ":"))
    if json.loads(text)["config"] != config:  # not plain JSON data: opening will parse the YAML
        return {}
    return {"universe_json": text}


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _universe_from_attributes(rows: Mapping[str, str]) -> DimensionUniverse:
    """The registry's universe, from ``universe_json`` when it matches the stored text (no PyYAML).

    The text stays the universe's identity (pickles, ``from_version``, ``default()`` give the same
    object): the JSON copy only spares parsing the YAML.
    """
    text = rows["universe"]
    stored = rows.get("universe_json")
    if stored is None:
        return DimensionUniverse.from_text(text)
    digest = _digest(text)

    def parsed() -> Mapping[str, Any] | None:
        try:
            data = json.loads(stored)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("digest") != digest or not isinstance(data.get("config"), dict):
            return None
        config: dict[str, Any] = data["config"]
        return config

    return DimensionUniverse.from_text(text, parsed=parsed)


def _attributes_table(namespace: str | None) -> sa.Table:
    """``butler_attributes`` for reading at open, with generic column types: the schema's
    case-sensitive string type would import SQLAlchemy's MySQL dialect whatever the backend."""
    return sa.Table("butler_attributes", sa.MetaData(schema=namespace),
                    sa.Column("name", sa.String(64), primary_key=True), sa.Column("value", sa.Text, nullable=False))
