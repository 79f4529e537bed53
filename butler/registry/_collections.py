"""Collections: RUN (owns datasets), TAGGED (hand-picked refs), CHAINED (a search path).

All collection rows are small, so the manager caches them in memory; a name that is not in
the cache is looked up in the database before it is called unknown, so collections made by
other processes are found without an explicit refresh. A change that makes cached records wrong
(a removal, a hand-over, new chain children) writes a new random token to the
``collections_generation`` attribute in its transaction; every lookup by name (`get`, `resolve`)
first reads that one row and reloads the cache if the token changed, so no process goes on
searching a removed run, or a run's old id (which SQLite may give to a new collection).
"""

from __future__ import annotations

import difflib
import enum
import fnmatch
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ..errors import CollectionError, ConflictError, InvalidNameError
from ._database import Database, dbapi_connection
from ._schema import NAME_LENGTH, OWNER_LENGTH, RegistrySchema

__all__ = ["CollectionManager", "CollectionRecord", "CollectionType", "check_collection_names", "validate_collection_name"]

GENERATION_ATTRIBUTE = "collections_generation"
_UNKNOWN = "?"  # never a token: the cache is reloaded at the next lookup


class CollectionType(enum.IntEnum):
    RUN = 1
    TAGGED = 2
    CHAINED = 3
    CALIBRATION = 4


@dataclass(frozen=True, slots=True)
class CollectionRecord:
    id: int
    name: str
    type: CollectionType
    owner: str | None
    doc: str | None


_GLOB_CHARS = re.compile(r"[*?\[]")


_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-:@=,]*")
_RESERVED_FIRST = ("butler.yaml", "butler.sqlite3")
"""Names of repository files at the root: a RUN's files live in ``<root>/<first part>/...``."""


def validate_collection_name(name: object, *, reserved: tuple[str, ...] = ()) -> str:
    """Check a collection name; raise `InvalidNameError` saying what is wrong.

    Collection names become directories of RUN files, so each '/'-part must be one safe path
    component (letters, digits and ``_ . + - : @ = ,``, not starting with '.', no '..'), and
    the first part must not be a repository file (``butler.yaml``, ``butler.sqlite3*``, or a
    name starting with one of ``reserved``: the repository's own registry file).
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"a collection name must be a string, got {name!r} ({type(name).__name__})")
    if not name or len(name) > NAME_LENGTH:
        raise InvalidNameError(
            f"invalid collection name {_shown(name)}: use 1 to {NAME_LENGTH} characters (it has {len(name)})")
    if name.startswith("/") or name.endswith("/"):
        raise InvalidNameError(f"invalid collection name {name!r}: it must not start or end with '/'")
    for part in name.split("/"):
        if _NAME_PART.fullmatch(part) is None or ".." in part:
            raise InvalidNameError(
                f"invalid collection name {name!r}: the part {part!r} {_part_problem(part)}; each '/'-separated "
                "part must start with a letter, digit or '_' and contain only letters, digits and _ . + - : @ = ,"
            )
    first = name.split("/", 1)[0]
    if first == _RESERVED_FIRST[0] or any(first.startswith(r) for r in (_RESERVED_FIRST[1], *reserved)):
        raise InvalidNameError(
            f"invalid collection name {name!r}: {first!r} is the name of a repository file at the root "
            "(the run's files would go there); choose another name"
        )
    return name


def _shown(name: str) -> str:
    return repr(name) if len(name) <= 60 else repr(name[:40]) + "..."


def _part_problem(part: str) -> str:
    """Why one '/'-part of a collection name is not a safe path component."""
    if not part:
        return "is empty ('//')"
    if part in (".", ".."):
        return "is a relative directory reference"
    if part.startswith("."):
        return "starts with '.' (hidden or reserved, like '.locks')"
    if ".." in part:
        return "contains '..'"
    for i, ch in enumerate(part):
        if ch == "\x00":
            return f"contains a NUL character at position {i}"
        if ch == "\\":
            return "contains a backslash"
        if not ch.isprintable() or ch.isspace():
            return f"contains the control or space character {ch!r} at position {i}"
    bad = next((ch for ch in part if _NAME_PART.fullmatch("a" + ch) is None), part[:1])
    return f"contains the character {bad!r}"


def check_collection_names(collections: object) -> list[str]:
    """``collections`` as a list of names: a name or a sequence of names, else `InvalidNameError`."""
    if isinstance(collections, str):
        return [collections]
    if collections is None or isinstance(collections, (Mapping, bytes, bytearray)) or not isinstance(
            collections, Iterable):
        raise InvalidNameError(
            f"collections must be a collection name or a sequence of names, not {type(collections).__name__} "
            f"({_shown(repr(collections))})"
        )
    items = list(collections)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidNameError(
                f"collections must be names (strings): item {i} of {_shown(repr(items))} is "
                f"{item!r} ({type(item).__name__})"
            )
    return items


class CollectionManager:
    """Create, cache and resolve collections."""

    def __init__(self, db: Database, schema: RegistrySchema):
        self._db = db
        self._table = schema.collection
        self._chain_table = schema.collection_chain
        self._by_name: dict[str, CollectionRecord] | None = None
        self._by_id: dict[int, CollectionRecord] = {}
        self._chains: dict[int, tuple[int, ...]] = {}
        self._locked_sql: dict[bool, tuple[str, bool]] = {}
        self._attributes = schema.attributes
        self._generation: str | None = _UNKNOWN  # the token the cache was loaded at (None: never changed)
        self._generation_sql: str | None = None

    # -- cache ----------------------------------------------------------------------------
    def refresh(self) -> None:
        with self._db.transaction() as conn:
            self._load(conn)

    def _read_generation(self, conn: sa.Connection) -> str | None:
        """The token in ``conn`` (compiled once, run on the driver's cursor: it precedes every lookup)."""
        if self._generation_sql is None:
            a = self._attributes
            stmt = sa.select(a.c.value).where(a.c.name == sa.literal(GENERATION_ATTRIBUTE, literal_execute=True))
            self._generation_sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        cursor = dbapi_connection(conn).cursor()
        try:
            cursor.execute(self._generation_sql)
            row = cursor.fetchone()
        except conn.dialect.loaded_dbapi.Error as err:  # as SQLAlchemy would raise it
            raise sa.exc.DBAPIError.instance(self._generation_sql, (), err, conn.dialect.loaded_dbapi.Error) from err
        finally:
            cursor.close()
        return None if row is None else row[0]

    def revalidate(self, conn: sa.Connection | None = None) -> None:
        """Reload the cache if another process removed a collection, handed a run over or changed
        a chain since it was loaded (one single-row SELECT, in ``conn`` if given: a read that
        resolves collections in its own transaction sees them as of its snapshot)."""
        if self._by_name is None:
            return
        if conn is None:
            with self._db.transaction() as c:
                return self.revalidate(c)
        if self._read_generation(conn) != self._generation:
            self._load(conn)

    def _changed(self, conn: sa.Connection) -> None:
        """Invalidate every process's cache (`revalidate`) when ``conn`` commits; this process's
        cache too, as it may have missed a change made before this one."""
        a = self._attributes
        token = uuid.uuid4().hex
        if conn.execute(a.update().where(a.c.name == GENERATION_ATTRIBUTE).values(value=token)).rowcount == 0:
            conn.execute(self._db.insert_ignore(a).values(name=GENERATION_ATTRIBUTE, value=token))  # first ever
        self._generation = _UNKNOWN

    def _load(self, conn: sa.Connection) -> None:
        self._generation = self._read_generation(conn)
        t = self._table
        by_name = {}
        by_id = {}
        for row in conn.execute(sa.select(t.c.collection_id, t.c.name, t.c.type, t.c.owner, t.c.doc)):
            rec = CollectionRecord(row[0], row[1], CollectionType(row[2]), row[3], row[4])
            by_name[rec.name] = rec
            by_id[rec.id] = rec
        chains: dict[int, list[tuple[int, int]]] = {}
        c = self._chain_table
        links: Sequence[tuple[int, int, int]] = conn.execute(sa.select(c.c.parent_id, c.c.position, c.c.child_id)).all()
        for parent, pos, child in links:
            chains.setdefault(parent, []).append((pos, child))
        self._chains = {p: tuple(ch for _, ch in sorted(v)) for p, v in chains.items()}
        self._by_name = by_name
        self._by_id = by_id

    @property
    def _names(self) -> dict[str, CollectionRecord]:
        if self._by_name is None:
            self.refresh()
        assert self._by_name is not None
        return self._by_name

    def find(self, name: str) -> CollectionRecord | None:
        rec = self._names.get(name)
        if rec is None:
            self.refresh()
            rec = self._names.get(name)
        return rec

    def get(self, name: str) -> CollectionRecord:
        """The record of ``name`` as committed now (see `revalidate`), or a CollectionError."""
        self.revalidate()
        return self._get(name)

    def _get(self, name: str) -> CollectionRecord:
        rec = self.find(name)
        if rec is None:
            close = difflib.get_close_matches(name, list(self._names), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise CollectionError(f"collection {name!r} does not exist{hint}")
        return rec

    def forget(self, name: str) -> None:
        """Drop a cached record (after a rolled-back transaction that may have created it)."""
        if self._by_name is not None:
            rec = self._by_name.pop(name, None)
            if rec is not None:
                self._by_id.pop(rec.id, None)

    def by_id(self, collection_id: int) -> CollectionRecord:
        rec = self._by_id.get(collection_id)
        if rec is None:
            self.refresh()
            rec = self._by_id[collection_id]
        return rec

    # -- creation -------------------------------------------------------------------------
    def register(
        self, name: str, type: CollectionType, *, owner: str | None = None, doc: str | None = None,
        conn: sa.Connection | None = None,
    ) -> tuple[CollectionRecord, bool]:
        """Create the collection if absent; return it and whether it was created.

        An existing collection of another type is a ``ConflictError``.
        """
        validate_collection_name(name)
        existing = self._names.get(name)
        if existing is None:
            if conn is None:
                with self._db.transaction(write=True) as c:
                    return self.register(name, type, owner=owner, doc=doc, conn=c)
            stmt = self._db.insert_ignore(self._table).values(name=name, type=int(type), owner=owner, doc=doc)
            if self._db.dialect == "mysql":
                created = conn.execute(stmt).rowcount == 1
            else:  # rowcount is unreliable with PostgreSQL's implicit RETURNING
                created = conn.execute(stmt.returning(self._table.c.collection_id)).first() is not None
            row = conn.execute(
                sa.select(self._table.c.collection_id, self._table.c.type, self._table.c.owner, self._table.c.doc)
                .where(self._table.c.name == name)
            ).one()
            existing = CollectionRecord(row[0], name, CollectionType(row[1]), row[2], row[3])
            self._names[name] = existing
            self._by_id[existing.id] = existing
        else:
            created = False
        if existing.type != type:
            raise ConflictError(
                f"collection {name!r} already exists as a {existing.type.name} collection, not {type.name}"
            )
        return existing, created

    # -- row locks and ownership (butler._ownership makes the decisions) -------------------------
    def read_locked(self, conn: sa.Connection, name: str, *, exclusive: bool = False) -> CollectionRecord | None:
        """The row of ``name`` as committed now, read in ``conn`` with a row lock, or None if absent.

        ``FOR SHARE`` (``exclusive``: ``FOR UPDATE``) on PostgreSQL and MySQL holds off a concurrent
        hand-over or removal of the run until ``conn`` commits; SQLite has no row locks, but its
        write transactions (``BEGIN IMMEDIATE``) are serialised already. The cache is updated.
        """
        sql = self._locked_sql.get(exclusive)
        if sql is None:  # compiled once, run on the driver's cursor: ~10 us, where SQLAlchemy's execute costs ~100
            t = self._table
            stmt = (sa.select(t.c.collection_id, t.c.type, t.c.owner, t.c.doc).where(t.c.name == sa.bindparam("name"))
                    .with_for_update(read=not exclusive))
            compiled = stmt.compile(dialect=conn.dialect)
            sql = self._locked_sql[exclusive] = (str(compiled), bool(compiled.positional))
        params = (name,) if sql[1] else {"name": name}
        cursor = dbapi_connection(conn).cursor()
        try:
            cursor.execute(sql[0], params)
            row = cursor.fetchone()
        except conn.dialect.loaded_dbapi.Error as err:  # as SQLAlchemy would raise it (lock timeouts...)
            raise sa.exc.DBAPIError.instance(sql[0], params, err, conn.dialect.loaded_dbapi.Error) from err
        finally:
            cursor.close()
        if row is None:
            self.forget(name)
            return None
        return self._cache(CollectionRecord(row[0], name, CollectionType(row[1]), row[2], row[3]))

    def insert_if_absent(self, conn: sa.Connection, name: str, type: CollectionType, *, owner: str | None = None,
                         doc: str | None = None) -> None:
        """INSERT the collection unless a row of that name exists (or is being inserted: the
        servers make this wait for the other transaction). Read the row with `read_locked`."""
        validate_collection_name(name)
        conn.execute(self._db.insert_ignore(self._table).values(name=name, type=int(type), owner=owner, doc=doc))

    @property
    def owner_length(self) -> int:
        """The longest owner name the ``collection`` table holds (the same on every backend)."""
        return OWNER_LENGTH

    def set_owner(self, conn: sa.Connection, rec: CollectionRecord, owner: str) -> CollectionRecord:
        """Record ``owner`` for ``rec`` (locked by the caller with ``read_locked(exclusive=True)``)."""
        conn.execute(self._table.update().where(self._table.c.collection_id == rec.id).values(owner=owner))
        self._changed(conn)
        return self._cache(CollectionRecord(rec.id, rec.name, rec.type, owner, rec.doc))

    def _cache(self, rec: CollectionRecord) -> CollectionRecord:
        if self._by_name is not None:
            old = self._by_name.get(rec.name)
            if old is not None and old.id != rec.id:
                self._by_id.pop(old.id, None)
            self._by_name[rec.name] = rec
        self._by_id[rec.id] = rec
        return rec

    def set_chain(self, name: str, children: Sequence[str], conn: sa.Connection) -> None:
        parent = self._get(name)
        if parent.type != CollectionType.CHAINED:
            raise CollectionError(f"collection {name!r} is {parent.type.name}, not CHAINED; cannot set its children")
        child_recs = [self._get(c) for c in children]
        for child in child_recs:
            if self._reaches(child.id, parent.id):
                raise CollectionError(f"adding {child.name!r} to chain {name!r} would create a cycle")
        conn.execute(self._chain_table.delete().where(self._chain_table.c.parent_id == parent.id))
        if child_recs:
            conn.execute(
                self._chain_table.insert(),
                [{"parent_id": parent.id, "position": i, "child_id": c.id} for i, c in enumerate(child_recs)],
            )
        self._chains[parent.id] = tuple(c.id for c in child_recs)
        self._changed(conn)

    def _reaches(self, start: int, target: int) -> bool:
        if start == target:
            return True
        return any(self._reaches(child, target) for child in self._chains.get(start, ()))

    def chain_children(self, name: str) -> list[str]:
        rec = self.get(name)
        return [self.by_id(i).name for i in self._chains.get(rec.id, ())]

    def remove(self, records: Iterable[CollectionRecord], conn: sa.Connection) -> None:
        ids = [r.id for r in records]
        if not ids:
            return
        parents: Sequence[tuple[int, int]] = conn.execute(
            sa.select(self._chain_table.c.parent_id, self._chain_table.c.child_id)
            .where(self._chain_table.c.child_id.in_(ids))
        ).all()
        for parent_id, child_id in parents:
            if parent_id not in ids:
                raise CollectionError(
                    f"collection {self.by_id(child_id).name!r} is a child of chain "
                    f"{self.by_id(parent_id).name!r}; remove it from the chain first"
                )
        conn.execute(self._table.delete().where(self._table.c.collection_id.in_(ids)))
        self._changed(conn)
        self._by_name = None
        self._by_id = {}  # an id may be given to a new collection (SQLite reuses the highest)

    # -- resolution -----------------------------------------------------------------------
    def query(self, pattern: str | Sequence[str] = "*", types: Iterable[CollectionType] | None = None
              ) -> list[CollectionRecord]:
        """Collections whose names match any of the glob patterns, sorted by name."""
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        allowed = set(types) if types is not None else None
        self.refresh()
        out = []
        for name, rec in sorted(self._names.items()):
            if allowed is not None and rec.type not in allowed:
                continue
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                out.append(rec)
        return out

    def resolve(self, collections: str | Sequence[str], conn: sa.Connection | None = None) -> list[CollectionRecord]:
        """Flatten a search path: chains expanded in order, globs expanded by name, no duplicates
        (as committed now: `revalidate`, in ``conn`` if given)."""
        items = check_collection_names(collections)
        self.revalidate(conn)
        out: dict[int, CollectionRecord] = {}
        for item in items:
            if _GLOB_CHARS.search(item):
                matched = self.query(item)
                if not matched:
                    raise CollectionError(
                        f"no collection matches the pattern {item!r}; collections: {sorted(self._names)[:20]}"
                    )
                recs = matched
            else:
                recs = [self._get(item)]
            for rec in recs:
                self._flatten(rec, out)
        return list(out.values())

    def _flatten(self, rec: CollectionRecord, out: dict[int, CollectionRecord]) -> None:
        if rec.type == CollectionType.CHAINED:
            for child in self._chains.get(rec.id, ()):
                self._flatten(self.by_id(child), out)
        elif rec.id not in out:
            out[rec.id] = rec
