"""Table definitions of the registry, built in code from the dimension universe.

Nothing is reflected from the database at open (reflection is slow and would grow with the
number of tables); the tables are rebuilt from the universe stored in the repository. Dataset
searches go through one *tags* table per dimension group (``dataset_tags_<dims>``), whose
columns are the group's required dimensions, so a lookup by data ID is one indexed query.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.schema import SchemaItem

from .._dataset_type import NAME_LENGTH as DATASET_TYPE_NAME_LENGTH
from ..dimensions import DimensionElement, DimensionGroup, DimensionUniverse, FieldSpec

__all__ = ["SCHEMA_VERSION", "RegistrySchema"]

SCHEMA_VERSION = 1
SCHEMA_MINOR = 4
"""Backward-compatible additions to version 1 (see `Registry.upgrade_for_writes`)."""

NAME_LENGTH = 255
"""Longest collection name (validated by ``validate_collection_name``)."""

OWNER_LENGTH = 64
"""Longest owner name of a RUN collection."""


_new = object.__new__
_set = object.__setattr__
_UNKNOWN = uuid.SafeUUID.unknown


def fast_uuid(hex_value: str) -> uuid.UUID:
    """``uuid.UUID(hex_value)`` without its validation (~5x faster); the DB wrote the value."""
    u = _new(uuid.UUID)
    _set(u, "int", int(hex_value, 16))
    _set(u, "is_safe", _UNKNOWN)
    return u


class DatasetIdType(sa.types.TypeDecorator[uuid.UUID]):
    """Dataset UUIDs: native on PostgreSQL, 32 hex characters elsewhere, decoded quickly.

    Queries return thousands of ids; the stock type spends most of a 500-ref query in
    ``uuid.UUID.__init__``.
    """

    impl = sa.Uuid
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.Uuid(as_uuid=True))
        return dialect.type_descriptor(sa.String(32))

    def process_bind_param(self, value: uuid.UUID | str | None, dialect: sa.Dialect) -> uuid.UUID | str | None:
        if value is None or dialect.name == "postgresql":
            return value
        return value.hex if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).hex

    def process_result_value(self, value: uuid.UUID | str | None, dialect: sa.Dialect) -> uuid.UUID | None:
        if value is None or isinstance(value, uuid.UUID):
            return value
        return fast_uuid(value)


class CaseSensitiveString(sa.types.TypeDecorator[str]):
    """A VARCHAR that compares case-sensitively on every backend (MySQL's default collation does not).

    On MySQL/MariaDB the column gets the ``utf8mb4_bin`` collation; elsewhere it is a plain
    VARCHAR, which already compares case-sensitively. The choice is made per dialect when a
    statement is compiled, so SQLite and PostgreSQL never import the MySQL dialect (~9 ms).
    """

    impl = sa.String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(sa.String(self.length, collation="utf8mb4_bin"))
        return dialect.type_descriptor(sa.String(self.length))

    def coerce_compared_value(self, op: Any, value: Any) -> sa.types.TypeEngine[Any]:
        # As a plain String does: itself for strings, the value's own type for anything else.
        coerced = self.impl_instance.coerce_compared_value(op, value)
        return self if coerced is self.impl_instance else coerced

    @property
    def python_type(self) -> type:
        return str


def string(length: int) -> sa.types.TypeEngine[Any]:
    """A `CaseSensitiveString` of ``length`` characters."""
    return CaseSensitiveString(length)


def _column_type(spec: FieldSpec) -> sa.types.TypeEngine[Any]:
    if spec.type == "int":
        return sa.BigInteger()
    if spec.type == "str":
        return string(spec.length or 64)
    if spec.type == "float":
        return sa.Float(precision=53)
    if spec.type == "time":
        return sa.BigInteger()
    if spec.type == "bool":
        return sa.Boolean()
    return sa.LargeBinary()


def _key_type(universe: DimensionUniverse, dimension: str) -> sa.types.TypeEngine[Any]:
    key = universe[dimension].key
    assert key is not None
    return _column_type(key)


def tags_table_name(group: DimensionGroup) -> str:
    name = "dataset_tags_" + "_".join(group.required) if group.required else "dataset_tags_empty"
    if len(name) > 60:
        name = "dataset_tags_" + hashlib.blake2b("_".join(group.required).encode(), digest_size=8).hexdigest()
    return name


@dataclass
class RegistrySchema:
    """All tables of one repository's registry."""

    universe: DimensionUniverse
    namespace: str | None
    metadata: sa.MetaData = field(init=False)
    attributes: sa.Table = field(init=False)
    collection: sa.Table = field(init=False)
    collection_chain: sa.Table = field(init=False)
    dataset_type: sa.Table = field(init=False)
    dataset: sa.Table = field(init=False)
    file_record: sa.Table = field(init=False)
    file_record_path_index: sa.Index = field(init=False)
    file_journal: sa.Table = field(init=False)
    elements: dict[str, sa.Table] = field(init=False)
    quantum: sa.Table = field(init=False)
    quantum_output: sa.Table = field(init=False)
    quantum_output_index: sa.Index = field(init=False)
    skypix: dict[str, sa.Table] = field(init=False)
    calibs: sa.Table = field(init=False)
    _tags: dict[str, sa.Table] = field(init=False)

    def __post_init__(self) -> None:
        md = self.metadata = sa.MetaData(schema=self.namespace)
        self.attributes = sa.Table(
            "butler_attributes",
            md,
            sa.Column("name", string(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        self.collection = sa.Table(
            "collection",
            md,
            sa.Column("collection_id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", string(NAME_LENGTH), nullable=False, unique=True),
            sa.Column("type", sa.SmallInteger, nullable=False),
            sa.Column("owner", string(OWNER_LENGTH), nullable=True),
            sa.Column("doc", sa.Text, nullable=True),
        )
        self.collection_chain = sa.Table(
            "collection_chain",
            md,
            sa.Column("parent_id", sa.Integer, sa.ForeignKey(self.collection.c.collection_id, ondelete="CASCADE"),
                      primary_key=True),
            sa.Column("position", sa.Integer, primary_key=True),
            sa.Column("child_id", sa.Integer, sa.ForeignKey(self.collection.c.collection_id), nullable=False),
        )
        self.dataset_type = sa.Table(
            "dataset_type",
            md,
            sa.Column("dataset_type_id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", string(DATASET_TYPE_NAME_LENGTH), nullable=False, unique=True),
            sa.Column("dimensions", string(512), nullable=False),
            sa.Column("storage_class", string(64), nullable=False),
            sa.Column("is_calibration", sa.Boolean, nullable=False, default=False),
            sa.Column("tag_table", string(64), nullable=False),
        )
        self.dataset = sa.Table(
            "dataset",
            md,
            sa.Column("dataset_id", DatasetIdType, primary_key=True),
            sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey(self.dataset_type.c.dataset_type_id),
                      nullable=False),
            sa.Column("run_id", sa.Integer, sa.ForeignKey(self.collection.c.collection_id, ondelete="CASCADE"),
                      nullable=False, index=True),
            sa.Column("ingest_time", sa.BigInteger, nullable=True),
        )
        self.file_record = sa.Table(
            "file_record",
            md,
            sa.Column("dataset_id", DatasetIdType, sa.ForeignKey(self.dataset.c.dataset_id, ondelete="CASCADE"),
                      primary_key=True),
            sa.Column("component", string(32), primary_key=True, default=""),
            sa.Column("path", string(1024), nullable=False),
            sa.Column("formatter", string(64), nullable=False),
            sa.Column("storage_class", string(64), nullable=False),
            sa.Column("checksum", string(64), nullable=True),
            sa.Column("file_size", sa.BigInteger, nullable=True),
        )
        # Clean-up and verify ask "is this path registered?" (never delete a file that is).
        self.file_record_path_index = sa.Index("file_record_path", self.file_record.c.path,
                                               mysql_length=768)  # InnoDB keys are <= 3072 bytes
        # Intents of write paths that a crash could leave half-done (see registry/_journal.py).
        # No foreign keys: a row must outlive the run or dataset it is about.
        self.file_journal = sa.Table(
            "file_journal",
            md,
            sa.Column("journal_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                      autoincrement=True),
            sa.Column("op", sa.String(32), nullable=False, index=True),
            sa.Column("run", string(NAME_LENGTH), nullable=False),
            sa.Column("action", sa.String(8), nullable=False),
            sa.Column("path", string(1024), nullable=False),
            sa.Column("dataset_id", DatasetIdType, nullable=True, index=True),
            sa.Column("source", sa.Text, nullable=True),
            sa.Column("committed", sa.Boolean, nullable=False, default=False),
            sa.Column("created_ns", sa.BigInteger, nullable=False),
            sa.Column("host", string(128), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
        )
        # Provenance of pipeline executions: one row per executed quantum, and which quantum
        # wrote each dataset (written by executors; queried by Butler.provenance).
        self.quantum = sa.Table(
            "quantum",
            md,
            sa.Column("quantum_id", DatasetIdType, primary_key=True),
            sa.Column("run_id", sa.Integer, sa.ForeignKey(self.collection.c.collection_id, ondelete="CASCADE"),
                      nullable=False, index=True),
            sa.Column("task", string(128), nullable=False),
            sa.Column("data_id", sa.Text, nullable=False),
            sa.Column("config_digest", string(64), nullable=True),
            sa.Column("host", string(128), nullable=True),
            sa.Column("worker", string(256), nullable=True),  # the Dask worker address (failed quanta)
            sa.Column("start_ns", sa.BigInteger, nullable=True),
            sa.Column("end_ns", sa.BigInteger, nullable=True),
            sa.Column("status", string(16), nullable=False),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("inputs", sa.Text, nullable=True),
        )
        self.quantum_output = sa.Table(
            "quantum_output",
            md,
            sa.Column("dataset_id", DatasetIdType, sa.ForeignKey(self.dataset.c.dataset_id, ondelete="CASCADE"),
                      primary_key=True),
            sa.Column("quantum_id", DatasetIdType, sa.ForeignKey(self.quantum.c.quantum_id, ondelete="CASCADE"),
                      nullable=False),
        )
        # Covering: the restart check joins a run's quanta to their outputs without reading rows.
        self.quantum_output_index = sa.Index("quantum_output_by_quantum", self.quantum_output.c.quantum_id,
                                             self.quantum_output.c.dataset_id)
        # CALIBRATION collections (issue 7): one generic table; a calib's data ID is the one of
        # its RUN tags row (see butler/registry/_calibrations.py). Validity is [begin, end) in ns.
        self.calibs = sa.Table(
            "dataset_calibs",
            md,
            sa.Column("calib_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                      autoincrement=True),
            sa.Column("collection_id", sa.Integer,
                      sa.ForeignKey(self.collection.c.collection_id, ondelete="CASCADE"), nullable=False),
            sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey(self.dataset_type.c.dataset_type_id),
                      nullable=False),
            sa.Column("dataset_id", DatasetIdType, sa.ForeignKey(self.dataset.c.dataset_id, ondelete="CASCADE"),
                      nullable=False, index=True),
            sa.Column("begin_ns", sa.BigInteger, nullable=False),
            sa.Column("end_ns", sa.BigInteger, nullable=False),
            sa.Index("dataset_calibs_lookup", "collection_id", "dataset_type_id", "begin_ns"),
        )
        self.elements = {}
        for element in self.universe.elements:
            self.elements[element.name] = self._element_table(element)
        self.skypix = {e.name: self._skypix_table(e) for e in self.universe.spatial_elements}
        self._tags = {}

    def _skypix_table(self, element: DimensionElement) -> sa.Table:
        """Spatial index of one element: a row per (record, pixel it touches)."""
        parent = self.elements[element.name]
        keys = list(element.primary_key_columns)
        cols: list[SchemaItem] = [
            sa.Column(k, parent.c[k].type, primary_key=True, autoincrement=False) for k in keys
        ]
        cols.append(sa.Column("pix", sa.BigInteger, primary_key=True, autoincrement=False))
        cols.append(sa.ForeignKeyConstraint(keys, [parent.c[k] for k in keys], ondelete="CASCADE"))
        cols.append(sa.Index(f"{element.name}_skypix_pix", "pix"))
        # SQLite: WITHOUT ROWID keeps one B-tree for the primary key instead of two (millions of rows
        # for a full-sky skymap).
        return sa.Table(f"{element.name}_skypix", self.metadata, *cols, sqlite_with_rowid=False)

    def _element_table(self, element: DimensionElement) -> sa.Table:
        universe = self.universe
        cols: list[SchemaItem] = []
        for dim in element.required:
            if dim == element.name:
                assert element.key is not None
                cols.append(sa.Column(element.key.name, _column_type(element.key), primary_key=True,
                                      autoincrement=False))
            else:
                cols.append(sa.Column(dim, _key_type(universe, dim), primary_key=True, autoincrement=False))
        for dim in element.implies:
            cols.append(sa.Column(dim, _key_type(universe, dim), nullable=True))
        for spec in element.fields:
            cols.append(sa.Column(spec.name, _column_type(spec), nullable=spec.nullable))
        if element.spatial:
            cols.append(sa.Column("region", sa.LargeBinary, nullable=True))
        # Foreign keys to each required dimension's table (not to itself).
        for dim in element.required:
            if dim == element.name:
                continue
            target = universe[dim]
            target_table = self.elements[dim]
            local = [d for d in target.required if d != dim] + [dim]
            remote = [target_table.c[c] for c in target.primary_key_columns]
            cols.append(sa.ForeignKeyConstraint(local, remote, ondelete="CASCADE"))
        # Implied dimensions must exist too (a visit's physical_filter, a filter's band).
        for dim in element.implies:
            target = universe[dim]
            target_table = self.elements[dim]
            local = [d for d in target.required if d != dim] + [dim]
            remote = [target_table.c[c] for c in target.primary_key_columns]
            cols.append(sa.ForeignKeyConstraint(local, remote))
        return sa.Table(element.name, self.metadata, *cols)

    # -- dynamic tags tables ----------------------------------------------------------------
    def tags_table(self, group: DimensionGroup) -> sa.Table:
        """The tags table of ``group`` (defined in metadata; created in the DB by the caller)."""
        name = tags_table_name(group)
        table = self._tags.get(name)
        if table is not None:
            return table
        universe = self.universe
        cols: list[SchemaItem] = [
            sa.Column("dataset_type_id", sa.Integer, sa.ForeignKey(self.dataset_type.c.dataset_type_id),
                      nullable=False),
            sa.Column("dataset_id", DatasetIdType, sa.ForeignKey(self.dataset.c.dataset_id, ondelete="CASCADE"),
                      primary_key=True),
            sa.Column("collection_id", sa.Integer,
                      sa.ForeignKey(self.collection.c.collection_id, ondelete="CASCADE"), primary_key=True),
        ]
        for dim in group.required:
            cols.append(sa.Column(dim, _key_type(universe, dim), nullable=False))
        cols.append(sa.UniqueConstraint("dataset_type_id", "collection_id", *group.required,
                                        name=f"{name}_unique"[:63]))
        # Data IDs of datasets must name existing dimension records.
        for dim in group.required:
            element = universe[dim]
            target_table = self.elements[dim]
            cols.append(sa.ForeignKeyConstraint(list(element.required),
                                                [target_table.c[c] for c in element.primary_key_columns]))
        table = sa.Table(name, self.metadata, *cols)
        self._tags[name] = table
        return table

    @staticmethod
    def attributes_table(namespace: str | None) -> sa.Table:
        """The attributes table alone, to open a registry before its universe is known."""
        return sa.Table(
            "butler_attributes",
            sa.MetaData(schema=namespace),
            sa.Column("name", string(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )

    def static_tables(self) -> list[sa.Table]:
        return [self.attributes, self.collection, self.collection_chain, self.dataset_type, self.dataset,
                self.file_record, self.file_journal, self.quantum, self.quantum_output, *self.elements.values(),
                *self.skypix.values(), self.calibs]
