"""Who owns a run, and the owner check every write and deletion makes inside its transaction.

Identity comes from what a variable cannot set where the registry can tell: on PostgreSQL and
MySQL it is the database role the connection authenticated as (`Database.current_user`), and
``$BUTLER_USER`` is ignored. A SQLite file has no authentication, so there it is the OS account
of the process (its effective uid, not ``$USER``/``$LOGNAME``), and ``$BUTLER_USER`` overrides it:
ownership on SQLite prevents accidents, it is not security (whoever can write the file can edit
the owner column).

The check is made on the run's row read with a row lock inside the transaction that writes or
deletes (`check_run_owner`, `ensure_run`), so it cannot be raced: two users creating the same
run at once are serialised by the unique name, and the second one sees the first one's row.
A check made earlier, outside the transaction (``RunAccess.check``), only fails fast.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import CollectionError, InvalidNameError, RunOwnershipError

if TYPE_CHECKING:
    from .registry._collections import CollectionRecord
    from .registry._database import Database
    from .registry._registry import Registry

__all__ = ["OVERRIDE_VARIABLE", "check_run_owner", "check_runs_of_datasets", "chown_run", "ensure_run",
           "identity", "os_account", "require_owner"]

OVERRIDE_VARIABLE = "BUTLER_USER"
"""Overrides the OS account as the identity on SQLite registries only."""

_FOREIGN_HINT = ("use a run of your own, or pass allow_foreign_run=True (CLI: --allow-foreign-run) if you "
                 "really mean to")


def os_account() -> str:
    """The login name of the process's effective uid, from the password database (not from the
    environment, which anyone can set)."""
    try:
        import pwd
    except ImportError:  # not a POSIX system
        import getpass

        return getpass.getuser()
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return f"uid-{uid}"


def identity(db: Database) -> str:
    """The owner recorded for the runs this process creates, and compared on every write."""
    if db.authenticates:
        return db.current_user()
    return os.environ.get(OVERRIDE_VARIABLE) or os_account()


def require_owner(rec: CollectionRecord, user: str, *, action: str, allow_foreign: bool) -> None:
    """Raise unless ``rec`` is a RUN that ``user`` may ``action`` ("write into it", "remove it"...).

    A run with no recorded owner is anybody's.
    """
    from .registry._collections import CollectionType

    if rec.type != CollectionType.RUN:
        raise CollectionError(f"refusing to {action}: {rec.name!r} is a {rec.type.name} collection, not a RUN")
    if rec.owner and rec.owner != user and not allow_foreign:
        raise RunOwnershipError(
            f"run {rec.name!r} belongs to {rec.owner!r}, not to you ({user!r}): refusing to {action}; {_FOREIGN_HINT}"
        )


def check_run_owner(registry: Registry, conn: Any, run: CollectionRecord | str, *, action: str,
                    allow_foreign: bool, exclusive: bool = False) -> CollectionRecord:
    """Lock the row of ``run`` in ``conn`` (``exclusive`` before deleting or updating it), check that
    the caller owns it, and return it as committed now (one indexed SELECT)."""
    name = run if isinstance(run, str) else run.name
    rec = registry.collections.read_locked(conn, name, exclusive=exclusive)
    if rec is None:
        raise CollectionError(f"run {name!r} does not exist (removed by another process?); cannot {action}")
    require_owner(rec, identity(registry.db), action=action, allow_foreign=allow_foreign)
    return rec


def ensure_run(registry: Registry, conn: Any, name: str, *, expected: CollectionRecord | None,
               allow_foreign: bool | None) -> CollectionRecord:
    """The locked, checked row of RUN ``name`` in ``conn``, inserted now (owned by the caller) if absent.

    ``expected`` is what a check before the transaction found (None: the run did not exist).
    ``allow_foreign=None`` means that check decided: the owner it accepted is still accepted, and
    a run that somebody else created or took over since is refused.
    """
    from .registry._collections import CollectionType

    user = identity(registry.db)
    collections = registry.collections
    # A locking read of an absent row takes a gap lock on MySQL, which deadlocks two creators:
    # insert first when the run is expected to be new.
    rec = collections.read_locked(conn, name) if expected is not None else None
    if rec is None:
        collections.insert_if_absent(conn, name, CollectionType.RUN, owner=user)
        rec = collections.read_locked(conn, name)
        assert rec is not None, f"run {name!r} vanished inside the transaction that inserted it"
    if allow_foreign is None:
        allow_foreign = expected is not None and expected.owner == rec.owner
    require_owner(rec, user, action="write into it", allow_foreign=allow_foreign)
    return rec


def check_runs_of_datasets(registry: Registry, conn: Any, dataset_ids: Sequence[Any], *,
                           allow_foreign: bool) -> None:
    """Lock and check the run of every dataset about to be deleted in ``conn`` (the registry says
    which runs hold them, not the refs; the cache that names them is checked in ``conn`` first, as
    an id may now belong to another run). Runs already removed hold nothing to delete."""
    registry.collections.revalidate(conn)
    for run_id in sorted(registry.datasets.run_ids_of(conn, dataset_ids)):  # one lock order: no deadlocks
        rec = registry.collections.read_locked(conn, registry.collections.by_id(run_id).name)
        if rec is not None:
            require_owner(rec, identity(registry.db), action="remove datasets from it", allow_foreign=allow_foreign)


def chown_run(registry: Registry, name: str, new_owner: str) -> CollectionRecord:
    """Hand RUN ``name`` over to ``new_owner``: only its owner may, in one transaction with the row
    locked. On a server registry the new owner must be an existing role (when the server lets
    us read its list of roles)."""
    length = registry.collections.owner_length
    if not isinstance(new_owner, str) or not new_owner or new_owner != new_owner.strip() or len(new_owner) > length:
        raise InvalidNameError(f"invalid new owner {new_owner!r} for run {name!r}: give a user or role name "
                               f"of 1 to {length} characters without surrounding spaces")
    db = registry.db
    if db.authenticates and db.role_exists(new_owner) is False:
        server = "PostgreSQL" if db.dialect == "postgresql" else "MySQL"
        raise InvalidNameError(
            f"cannot hand run {name!r} over to {new_owner!r}: the {server} server of this registry has no role "
            "of that name; on a server registry the owner is the database role that connects"
        )
    registry.collections.get(name)  # a missing name: CollectionError with close matches
    with registry.transaction(write=True) as conn:
        rec = registry.collections.read_locked(conn, name, exclusive=True)
        if rec is None:
            raise CollectionError(f"run {name!r} does not exist (removed by another process?); cannot hand it over")
        user = identity(db)
        try:
            require_owner(rec, user, action="hand it over", allow_foreign=False)
        except RunOwnershipError:
            raise RunOwnershipError(
                f"run {name!r} belongs to {rec.owner!r}, not to you ({user!r}): only its owner can hand it over "
                f"(as {rec.owner!r}: `butler chown-run REPO {name} {new_owner}`)"
            ) from None
        if rec.owner == new_owner:
            return rec
        return registry.collections.set_owner(conn, rec, new_owner)
