"""A thin DB-API 2.0 face over apsw, so SQLAlchemy's SQLite dialect runs the registry's queries on
an apsw connection (apsw has custom VFSes, which the standard ``sqlite3`` module has not).

Only what SQLAlchemy and the registry's driver-level fast paths use is here: ``connect`` is not
(connections are made by the caller's factory, see `butler.registry._database.driver_database`), cursors with ``execute``,
``executemany``, ``fetchone``/``fetchmany``/``fetchall``, ``description``, ``rowcount`` and
``lastrowid``, qmark parameters, ``create_function``, and the DB-API exception hierarchy, onto
which apsw's errors are mapped as the ``sqlite3`` module would raise them (a constraint is an
`IntegrityError`, a syntax error or a read-only database an `OperationalError`...).

apsw runs a statement as soon as it is executed and only knows a SELECT's columns while it runs:
``description`` is taken in apsw's execution tracer, called once the statement is prepared, so a
SELECT that returns no rows still describes its columns (SQLAlchemy needs that).

Exceptions raised by the VFS under the connection (a `butler.errors.RemoteError` when an HTTP
read fails) are not SQLite errors: apsw re-raises them as they are, and so does this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import apsw

__all__ = [
    "Connection", "Cursor", "DataError", "DatabaseError", "Error", "IntegrityError", "InterfaceError",
    "InternalError", "NotSupportedError", "OperationalError", "ProgrammingError", "Warning",
]

apilevel = "2.0"
threadsafety = 1
paramstyle = "qmark"
sqlite_version = apsw.sqlite_lib_version()
sqlite_version_info = tuple(int(p) for p in sqlite_version.split("."))


class Warning(Exception):
    pass


class Error(Exception):
    pass


class InterfaceError(Error):
    pass


class DatabaseError(Error):
    pass


class DataError(DatabaseError):
    pass


class OperationalError(DatabaseError):
    pass


class IntegrityError(DatabaseError):
    pass


class InternalError(DatabaseError):
    pass


class ProgrammingError(DatabaseError):
    pass


class NotSupportedError(DatabaseError):
    pass


_MAPPING: tuple[tuple[type[BaseException], type[Error]], ...] = (
    (apsw.ConstraintError, IntegrityError),
    (apsw.BindingsError, ProgrammingError),
    (apsw.CursorClosedError, ProgrammingError),
    (apsw.ConnectionClosedError, ProgrammingError),
    (apsw.MismatchError, DataError),
    (apsw.TooBigError, DataError),
    (apsw.RangeError, DataError),
    (apsw.CorruptError, DatabaseError),
    (apsw.NotADBError, DatabaseError),
    (apsw.InternalError, InternalError),
    (apsw.Error, OperationalError),  # SQL errors, read-only, busy, locked, I/O, cannot open...
)


def _translate(err: apsw.Error) -> Error:
    for source, target in _MAPPING:
        if isinstance(err, source):
            mapped = target(str(err))
            mapped.sqlite_errorname = type(err).__name__  # type: ignore[attr-defined]
            return mapped
    return DatabaseError(str(err))


class Cursor:
    """A DB-API cursor over one apsw cursor; rows are pulled lazily from the running statement."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._cursor = connection.apsw.cursor()
        self._cursor.exec_trace = self._traced
        self._rows: Iterator[tuple[Any, ...]] = iter(())
        self._description: tuple[tuple[str, str | None], ...] = ()
        self.rowcount = -1
        self.lastrowid: int | None = None

    def _traced(self, cursor: apsw.Cursor, sql: str, bindings: Any) -> bool:
        self._description = cursor.get_description()
        return True

    @property
    def description(self) -> tuple[tuple[str, None, None, None, None, None, None], ...] | None:
        if not self._description:
            return None
        return tuple((name, None, None, None, None, None, None) for name, _ in self._description)

    def execute(self, sql: str, parameters: Sequence[Any] | dict[str, Any] | None = None) -> Cursor:
        self._description = ()
        conn = self.connection.apsw
        before = conn.total_changes()
        try:
            self._rows = self._cursor.execute(sql, parameters if parameters else None)
        except apsw.Error as err:
            self._rows = iter(())
            raise _translate(err) from err
        self.rowcount = -1 if self._description else conn.total_changes() - before
        self.lastrowid = conn.last_insert_rowid()
        return self

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any] | dict[str, Any]]) -> Cursor:
        self._description = ()
        conn = self.connection.apsw
        before = conn.total_changes()
        try:
            for _ in self._cursor.executemany(sql, seq_of_parameters):
                pass
        except apsw.Error as err:
            raise _translate(err) from err
        finally:
            self._rows = iter(())
        self.rowcount = conn.total_changes() - before
        self.lastrowid = conn.last_insert_rowid()
        return self

    def _next(self, n: int | None) -> list[tuple[Any, ...]]:
        try:
            if n is None:
                return list(self._rows)
            out = []
            for row in self._rows:
                out.append(row)
                if len(out) >= n:
                    break
            return out
        except apsw.Error as err:
            raise _translate(err) from err

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self._next(1)
        return rows[0] if rows else None

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        return self._next(size or self.arraysize)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._next(None)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchone, None)

    def close(self) -> None:
        self._rows = iter(())
        try:
            self._cursor.close(force=True)
        except apsw.Error as err:
            raise _translate(err) from err

    def setinputsizes(self, sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass


class Connection:
    """A DB-API connection over an apsw connection. Statements outside an explicit ``BEGIN`` run in
    autocommit (as ``sqlite3`` with ``isolation_level=None``); ``commit``/``rollback`` end the
    transaction a ``BEGIN`` opened, if any."""

    def __init__(self, connection: apsw.Connection) -> None:
        self.apsw = connection
        self.isolation_level: str | None = None

    def cursor(self) -> Cursor:
        return Cursor(self)

    def commit(self) -> None:
        self._end("COMMIT")

    def rollback(self) -> None:
        self._end("ROLLBACK")

    def _end(self, sql: str) -> None:
        try:
            if self.apsw.in_transaction:
                self.apsw.execute(sql)
        except apsw.Error as err:
            raise _translate(err) from err

    def close(self) -> None:
        self.apsw.close(force=True)

    def create_function(self, name: str, narg: int, func: Callable[..., Any], *, deterministic: bool = False) -> None:
        self.apsw.create_scalar_function(name, func, narg, deterministic=deterministic)
