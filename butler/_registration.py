"""Registration methods of the Butler: instruments, dataset types, runs and collections.

What a repository knows before datasets go into it: an instrument's records and its
``instrument:<name>`` attribute (digest, class, aliases, file templates), dataset types checked
against the storage classes and file templates, and collections. The run a write goes into is
checked here too: before the write, to fail fast, and inside its transaction, where it counts
(`butler._ownership`); it is registered on the first write into it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._ownership import identity, require_owner
from .errors import ButlerError, CollectionError, ConflictError

if TYPE_CHECKING:
    from ._butler import Butler
    from ._dataset_type import DatasetType
    from .registry._collections import CollectionRecord, CollectionType

__all__ = [
    "ensure_run",
    "register_collection",
    "register_dataset_type",
    "register_instrument",
    "register_run",
    "run_record",
    "set_chain",
]


def register_instrument(butler: Butler, instrument: Any, *, update: bool = False, calibs: bool = True) -> None:
    """Register a camera and its records (see `Butler.register_instrument`)."""
    butler._require_writeable()
    from .instrument import load_instrument

    inst = load_instrument(instrument)
    registry = butler._registry
    records = inst.dimension_records()
    digest = inst.definition_digest()
    existing = registry.attributes.get(f"instrument:{inst.name}")
    if existing is None:
        registry.refresh_attributes()
        existing = registry.attributes.get(f"instrument:{inst.name}")
    if existing is not None and json.loads(existing)["digest"] != digest and not update:
        raise ConflictError(
            f"instrument {inst.name!r} is already registered with a different definition "
            f"(digest {json.loads(existing)['digest']} vs {digest}); pass update=True to replace it"
        )
    with registry.db.transaction(write=True) as conn:
        conflict = "replace" if update else "skip"
        registry.records.insert("instrument", records["instrument"], conflict=conflict, conn=conn)
        registry.records.insert("band", records["band"], conflict="skip", conn=conn)
        registry.records.insert("physical_filter", records["physical_filter"], conflict=conflict, conn=conn)
        registry.records.insert("detector", records["detector"], conflict=conflict, conn=conn)
    registry.set_attribute(
        f"instrument:{inst.name}",
        json.dumps({"digest": digest, "class_name": inst.class_name, "aliases": dict(inst.aliases),
                    "templates": dict(inst.file_templates)}),
    )
    butler._store = None  # the datastore's templates include the instrument's
    from ._calibs import setup_instrument_calibs

    if calibs and existing is None:  # first registration only: re-registering is a no-op
        setup_instrument_calibs(butler, inst)  # <instrument>/calib chain and the camera (issue 7)


def register_dataset_type(butler: Butler, dataset_type: DatasetType) -> bool:
    """Register a dataset type (idempotent) after checking its storage class and templates; whether it was new."""
    butler._require_writeable()
    from .datastore import get_storage_class

    get_storage_class(dataset_type.storage_class)
    butler.datastore.validate_dataset_type(dataset_type, dataset_type.group(butler.universe))
    _, created = butler._registry.dataset_types.register(dataset_type)
    return created


# -- collections ----------------------------------------------------------------------------------
def register_run(butler: Butler, name: str, *, doc: str | None = None) -> None:
    """Create RUN collection ``name``, owned by the current user; an existing run must be theirs."""
    butler._require_writeable()
    from .registry._collections import CollectionType

    registry = butler._registry
    with registry.db.transaction(write=True) as conn:
        try:
            registry.collections.insert_if_absent(conn, name, CollectionType.RUN, owner=identity(registry.db),
                                                  doc=doc)
            rec = registry.collections.read_locked(conn, name)
            assert rec is not None, f"collection {name!r} vanished inside the transaction that inserted it"
            if rec.type != CollectionType.RUN:
                raise ConflictError(f"collection {name!r} already exists as a {rec.type.name} collection, not RUN")
            require_owner(rec, identity(registry.db), action="register it as yours", allow_foreign=False)
        except BaseException:
            registry.collections.forget(name)
            raise


def register_collection(butler: Butler, name: str, type: CollectionType | str, *, doc: str | None = None) -> bool:
    """Create a collection of any type (a RUN is owned by the current user); whether it was new."""
    butler._require_writeable()
    from .registry._collections import CollectionType

    ctype = CollectionType[type.upper()] if isinstance(type, str) else type
    owner = identity(butler._registry.db) if ctype == CollectionType.RUN else None
    _, created = butler._registry.collections.register(name, ctype, owner=owner, doc=doc)
    return created


def set_chain(butler: Butler, name: str, children: Sequence[str]) -> None:
    """Set the ordered children of CHAINED collection ``name`` (created if absent), in one transaction."""
    butler._require_writeable()
    from .registry._collections import CollectionType

    registry = butler._registry
    with registry.db.transaction(write=True) as conn:
        registry.collections.register(name, CollectionType.CHAINED, conn=conn)
        registry.collections.set_chain(name, children, conn)


# -- the run of a write -----------------------------------------------------------------------------
def run_record(butler: Butler, run: str | None, allow_foreign_run: bool) -> tuple[str, CollectionRecord | None]:
    """The run a write goes into (``run`` or the Butler's) and its record, None if it does not exist yet.

    An existing run must be a RUN collection owned by the current user (or
    ``allow_foreign_run``); a new name is validated. This check only fails fast, before files are
    staged: `ensure_run` checks again inside the write transaction. The run's record is remembered
    by the Butler (`Butler.refresh` forgets it); a refusal re-reads it first.
    """
    from .registry._collections import CollectionType

    name = run if run is not None else butler.run
    if name is None:
        raise ButlerError("no run to write into: pass run=... to this call or open the Butler with run=...")
    registry = butler._registry
    rec = butler._checked_runs.get(name) or registry.collections.find(name)
    if rec is None:
        from .registry._collections import validate_collection_name

        validate_collection_name(name, reserved=butler._config.root_files)
        return name, None
    if rec.type != CollectionType.RUN:
        raise CollectionError(f"cannot write into {name!r}: it is a {rec.type.name} collection, not a RUN")
    user = identity(registry.db)
    if rec.owner and rec.owner != user and not allow_foreign_run:
        registry.collections.refresh()  # handed over to us since it was cached?
        fresh = registry.collections.find(name)
        if fresh is None or fresh.owner != rec.owner:
            butler._checked_runs.pop(name, None)
            return run_record(butler, run, allow_foreign_run)
        require_owner(rec, user, action="write into it", allow_foreign=False)
    butler._checked_runs[name] = rec
    return name, rec


def ensure_run(butler: Butler, conn: Any, name: str, rec: CollectionRecord | None, *,
               allow_foreign_run: bool | None = None) -> CollectionRecord:
    """The record of RUN ``name`` in the write transaction ``conn``: registered now (owned by the
    current user) if absent, its row locked and its owner checked (see `_ownership.ensure_run`).

    ``rec`` is what `run_record` found before the transaction; with ``allow_foreign_run=None``
    the owner it accepted stays accepted.
    """
    from ._ownership import ensure_run as ensure_owned_run

    return ensure_owned_run(butler._registry, conn, name, expected=rec, allow_foreign=allow_foreign_run)
