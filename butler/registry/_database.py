"""Database connections: engine creation per backend and the few dialect-specific operations.

One ``Database`` wraps a SQLAlchemy engine plus a *namespace* (a PostgreSQL schema, a MySQL
database, or nothing for SQLite). Engines are cached per process and URL, so opening a second
Butler on the same repository costs no connection set-up. SQLite runs in WAL mode with a busy
timeout, and write transactions start with ``BEGIN IMMEDIATE`` so concurrent writers queue on
the lock instead of failing on a read-to-write upgrade.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy import event

from ..errors import InvalidNameError, ReadOnlyError, RegistryConnectionError

__all__ = [
    "Database", "close_engine", "dbapi_connection", "driver_database", "forget_engines", "lost_race", "open_database",
    "validate_namespace",
]

_NAMESPACE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

_ENGINES: dict[str, sa.Engine] = {}
_ENGINES_LOCK = threading.Lock()

SQLITE_BUSY_TIMEOUT_MS = 60_000


def _sqlite_engine(url: str) -> sa.Engine:
    engine = sa.create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        poolclass=sa.pool.QueuePool,
        enable_from_linting=False,  # products of unrelated dimensions are intended
        pool_size=4,
        max_overflow=32,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("write") else "BEGIN")

    return engine


def _engine_for(url: str) -> sa.Engine:
    with _ENGINES_LOCK:
        engine = _ENGINES.get(url)
        if engine is None:
            if url.startswith("sqlite"):
                engine = _sqlite_engine(url)
            else:
                engine = sa.create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=16,
                                          enable_from_linting=False)
            _ENGINES[url] = engine
        return engine


@overload
def validate_namespace(namespace: str) -> str: ...
@overload
def validate_namespace(namespace: object) -> str | None: ...
def validate_namespace(namespace: object) -> str | None:
    """A namespace (PostgreSQL schema, MySQL database) is a plain identifier of at most 63
    characters (PostgreSQL's limit): letters, digits and '_', not starting with a digit."""
    if namespace is None:
        return None
    if not isinstance(namespace, str) or _NAMESPACE.fullmatch(namespace) is None:
        raise InvalidNameError(
            f"invalid registry namespace {namespace!r}: use 1 to 63 letters, digits and '_', "
            "not starting with a digit (it names a PostgreSQL schema or a MySQL database)"
        )
    return namespace


class Database:
    """A SQLAlchemy engine plus the namespace that holds this repository's tables."""

    def __init__(self, url: str, namespace: str | None = None, *, engine: sa.Engine | None = None,
                 read_only: bool = False):
        """``engine``: one made by the caller (a registry read over HTTP), used as is and not cached;
        ``url`` then only names the database in messages. ``read_only``: write transactions are
        refused (`ReadOnlyError`) before any SQL runs."""
        validate_namespace(namespace)
        self.url = url
        self.namespace = namespace
        self.engine = engine if engine is not None else _engine_for(url)
        self.read_only = read_only
        self._compiled: dict[str, tuple[str, tuple[str, ...] | None]] = {}
        self.dialect = self.engine.dialect.name  # "sqlite", "postgresql", "mysql"
        self._user: str | None = None

    # -- transactions ----------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, *, write: bool = False) -> Iterator[sa.Connection]:
        """A connection inside one transaction, committed on success and rolled back on error."""
        if write and self.read_only:
            raise ReadOnlyError(f"the registry {self.safe_url} is read-only (a statically hosted repository); "
                                "write into a local repository instead")
        try:
            conn = self.engine.connect()
        except sa.exc.OperationalError as err:
            raise RegistryConnectionError(
                f"cannot connect to the registry database {self.safe_url}: {err.orig}"
            ) from None
        try:
            if write:
                conn.info["write"] = True
            with conn.begin():
                yield conn
        finally:
            conn.info.pop("write", None)
            conn.close()

    @contextlib.contextmanager
    def schema_lock(self) -> Iterator[sa.Connection]:
        """A connection in which schema changes run one process at a time, committed at the end.

        SQLite: a ``BEGIN IMMEDIATE`` transaction (its DDL is transactional). PostgreSQL: a
        transaction holding an advisory lock. MySQL (whose DDL commits implicitly): a named lock
        held for the block. Callers re-check, inside, whether the change is still to be made.
        """
        if self.dialect in ("sqlite", "postgresql"):
            with self.transaction(write=True) as conn:
                if self.dialect == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:name))"),
                                 {"name": f"butler-schema-{self.namespace}"})
                yield conn
            return
        with self.engine.connect() as conn:
            name = f"butler-schema-{self.namespace}"[:64]
            if conn.execute(sa.text("SELECT GET_LOCK(:name, 120)"), {"name": name}).scalar() != 1:
                raise RegistryConnectionError(f"timed out waiting for another process to upgrade {self.safe_url}")
            try:
                yield conn
                conn.commit()
            finally:
                conn.execute(sa.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                conn.commit()

    @property
    def sqlite_path(self) -> str | None:
        """The file of a SQLite registry (None for servers and in-memory databases)."""
        if self.dialect != "sqlite":
            return None
        path = self.engine.url.database
        return path if path and path != ":memory:" and not path.startswith("file:") else None

    @property
    def safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    # -- identity ----------------------------------------------------------------------------
    @property
    def authenticates(self) -> bool:
        """Whether the server authenticates a role per connection (PostgreSQL, MySQL), so the role
        is an identity; SQLite has none (the OS account is used instead, see butler._ownership)."""
        return self.dialect != "sqlite"

    def current_user(self) -> str:
        """The role this registry's connections authenticate as, asked of the server once.

        PostgreSQL's ``current_user``; the user part of MySQL's ``CURRENT_USER()`` (``user@host``:
        the account the server matched, not the name the client asked for).
        """
        if not self.authenticates:
            raise ValueError("SQLite registries have no database role; use butler._ownership.identity")
        user = self._user
        if user is None:
            sql = "SELECT current_user" if self.dialect == "postgresql" else "SELECT CURRENT_USER()"
            with self.transaction() as conn:
                value = str(conn.exec_driver_sql(sql).scalar_one())
            user = self._user = value.rpartition("@")[0] if self.dialect == "mysql" else value
        return user

    def role_exists(self, name: str) -> bool | None:
        """Whether a role (PostgreSQL) or user (MySQL) ``name`` exists; None when the server does not
        let this connection read its list of accounts (MySQL's ``mysql.user`` needs a grant)."""
        if self.dialect == "postgresql":
            stmt = sa.text("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = :name")
        elif self.dialect == "mysql":
            stmt = sa.text("SELECT 1 FROM mysql.user WHERE User = :name LIMIT 1")
        else:
            return None
        try:
            with self.transaction() as conn:
                return conn.execute(stmt, {"name": name}).first() is not None
        except sa.exc.DBAPIError:  # no SELECT privilege on mysql.user
            return None

    # -- dialect specifics -------------------------------------------------------------------
    def insert_ignore(self, table: sa.Table) -> sa.Insert:
        """An INSERT that silently skips rows whose primary/unique key already exists."""
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            return sqlite_insert(table).on_conflict_do_nothing()
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table).on_conflict_do_nothing()
        return table.insert().prefix_with("IGNORE")

    def create_namespace(self) -> None:
        if self.namespace is None or self.dialect == "sqlite":
            return
        name = self.engine.dialect.identifier_preparer.quote_identifier(validate_namespace(self.namespace))
        with self.transaction(write=True) as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {name}")
            else:
                conn.exec_driver_sql(f"CREATE DATABASE IF NOT EXISTS {name}")

    def drop_namespace(self) -> None:
        """Drop every table of the namespace (tests use one namespace each)."""
        if self.namespace is None or self.dialect == "sqlite":
            raise ValueError("only PostgreSQL schemas and MySQL databases can be dropped")
        name = self.engine.dialect.identifier_preparer.quote_identifier(validate_namespace(self.namespace))
        with self.transaction(write=True) as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")

    def analyze(self, tables: Sequence[sa.Table]) -> None:
        """Refresh the query planner's statistics after a bulk load (SQLite otherwise picks bad join
        orders for spatial queries over freshly loaded millions of rows)."""
        prep = self.engine.dialect.identifier_preparer
        with self.engine.connect() as conn:
            for table in tables:
                name = prep.format_table(table)
                if self.dialect in ("sqlite", "postgresql"):
                    conn.exec_driver_sql(f"ANALYZE {name}")
                else:
                    conn.exec_driver_sql(f"ANALYZE TABLE {name}")
            conn.commit()

    def checkpoint(self, *, wait_ms: int | None = None) -> bool:
        """Copy a SQLite registry's write-ahead log into the main file and truncate it (so the file
        alone holds the repository: copies, static hosting, tests that damage it); nothing on servers.
        False when another connection's transaction kept the log from being emptied for ``wait_ms``
        (default: the busy timeout)."""
        if self.dialect != "sqlite":
            return True
        with self.engine.connect() as conn:
            cursor = dbapi_connection(conn).cursor()  # outside any transaction (no BEGIN is emitted)
            try:
                if wait_ms is not None:
                    cursor.execute(f"PRAGMA busy_timeout={int(wait_ms)}")
                row = cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                if wait_ms is not None:
                    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                cursor.close()
        return row is None or row[0] == 0

    def vacuum(self) -> None:
        """Rewrite a SQLite registry so that each table and index lies in consecutive pages (remote
        readers then scan with a few growing range requests); nothing on servers."""
        if self.dialect == "sqlite":
            with self.engine.connect() as conn:
                dbapi_connection(conn).execute("VACUUM")  # VACUUM cannot run inside a transaction

    def bulk_insert(self, conn: sa.Connection, table: sa.Table, columns: Sequence[str],
                    rows: Sequence[tuple[Any, ...]], *, chunk: int = 50_000) -> None:
        """Insert many tuples with the driver's executemany, bypassing per-row SQLAlchemy work.

        Used for millions of rows (skymap patches and their spatial index); values must already
        be in database form (ints, floats, str, bytes).
        """
        if not rows:
            return
        prep = self.engine.dialect.identifier_preparer
        placeholder = "?" if self.dialect == "sqlite" else "%s"
        sql = (
            f"INSERT INTO {prep.format_table(table)} ({', '.join(prep.quote(c) for c in columns)}) "
            f"VALUES ({', '.join([placeholder] * len(columns))})"
        )
        cursor = dbapi_connection(conn).cursor()
        try:
            for start in range(0, len(rows), chunk):
                cursor.executemany(sql, rows[start:start + chunk])
        finally:
            cursor.close()

    def execute_compiled(self, conn: sa.Connection, key: str, make: Any, params: dict[str, Any]) -> list[Any]:
        """Run the statement ``make()`` (compiled once per ``key``) on the driver's cursor: a hot
        statement costs ~10 us this way, ~100 us through SQLAlchemy's ``execute``. ``params`` are
        in database form (no type processing happens). Returns the rows, if the statement has any."""
        cached = self._compiled.get(key)
        if cached is None:
            compiled = make().compile(dialect=conn.dialect)
            names = tuple(compiled.positiontup or ()) if compiled.positional else None
            cached = self._compiled[key] = (str(compiled), names)
        sql, names = cached
        args = tuple(params[n] for n in names) if names is not None else params
        dbapi = conn.dialect.loaded_dbapi
        cursor = dbapi_connection(conn).cursor()
        try:
            cursor.execute(sql, args)
            return cursor.fetchall() if cursor.description else []
        except dbapi.Error as err:  # as SQLAlchemy would raise it
            raise sa.exc.DBAPIError.instance(sql, args, err, dbapi.Error) from err
        finally:
            cursor.close()

    def execute_many(self, conn: sa.Connection, stmt: Any, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            conn.execute(stmt, list(rows))


def dbapi_connection(conn: sa.Connection) -> Any:
    """The DBAPI connection under ``conn`` (a driver's own type: sqlite3, psycopg, pymysql)."""
    driver = conn.connection.driver_connection
    if driver is None:  # only once the connection was invalidated
        raise sa.exc.InvalidRequestError("the connection was invalidated: no driver connection")
    return driver


def lost_race(err: BaseException, *, deadlocks: bool = True) -> bool:
    """Whether ``err`` (raised by a registry call) is a transaction that lost to a concurrent one and
    may simply be retried: a primary-key conflict with a concurrent insert or, with ``deadlocks``, a
    deadlock/serialization failure (PostgreSQL 40001/40P01, MySQL 1205/1213)."""
    if isinstance(err, sa.exc.IntegrityError):
        return True
    if not isinstance(err, sa.exc.DBAPIError) or not deadlocks:
        return False
    orig = err.orig
    if getattr(orig, "sqlstate", None) in ("40001", "40P01"):  # PostgreSQL
        return True
    args: tuple[Any, ...] = getattr(orig, "args", ())
    return bool(args) and args[0] in (1205, 1213)  # MySQL/MariaDB lock wait timeout, deadlock


def close_engine(url: str) -> None:
    """Close every pooled connection to ``url`` and forget its engine (the next use reconnects);
    for tests that damage a registry file and then open it as a new process would."""
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(url, None)
    if engine is not None:
        engine.dispose()


def forget_engines(*, close: bool = False) -> None:
    """Forget every cached engine (the next use reconnects); their connections are closed only with
    ``close``: a forked child must not close the connections its parent still uses."""
    with _ENGINES_LOCK:
        for engine in _ENGINES.values():
            engine.dispose(close=close)
        _ENGINES.clear()


def driver_database(url: str, *, module: Any, connect: Any, read_only: bool = True) -> Database:
    """A `Database` (SQLite dialect) over another DB-API driver: ``module`` is its DB-API module and
    ``connect()`` makes one of its connections (apsw through ``butler.remote._dbapi_apsw``, reading a
    registry over HTTP). ``url`` names the database in messages; the engine is not cached."""
    engine = sa.create_engine("sqlite://", module=module, creator=connect, poolclass=sa.pool.QueuePool,
                              pool_size=4, max_overflow=16, enable_from_linting=False)
    return Database(url, None, engine=engine, read_only=read_only)


def open_database(url: str, namespace: str | None) -> Database:
    return Database(url, namespace)
