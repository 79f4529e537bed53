"""Registration methods of the Butler: instruments, dataset types, runs and collections.

What a repository knows before datasets go into it: an instrument's records and its
``instrument:<name>`` attribute (digest, class, aliases, file templates), dataset types checked
against the storage classes and file templates, and collections. The run a write goes into is
checked here too (`RunAccess`): before the write, to fail fast, and inside its transaction, where
it counts (`butler._ownership`); it is registered on the first write into it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._ownership import identity, require_owner
from .errors import CollectionError, ConflictError

if TYPE_CHECKING:
    from ._dataset_type import DatasetType
    from .datastore._interface import Datastore
    from .instrument import Instrument
    from .registry._collections import CollectionRecord, CollectionType
    from .registry._registry import Registry

__all__ = [
    "RunAccess",
    "register_collection",
    "register_dataset_type",
    "register_instrument",
    "register_run",
    "set_chain",
]


def register_instrument(registry: Registry, instrument: Any, *, update: bool = False) -> tuple[Instrument, bool]:
    """Register a camera's records and attribute (see `Butler.register_instrument`); return it and
    whether it is new to the repository."""
    from .instrument import load_instrument

    inst = load_instrument(instrument)
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
    with registry.transaction(write=True) as conn:
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
    return inst, existing is None


def register_dataset_type(registry: Registry, datastore: Datastore, dataset_type: DatasetType) -> bool:
    """Register a dataset type (idempotent) after checking its storage class and templates; whether it was new."""
    from .datastore import get_storage_class

    get_storage_class(dataset_type.storage_class)
    datastore.validate_dataset_type(dataset_type, dataset_type.group(registry.universe))
    _, created = registry.dataset_types.register(dataset_type)
    return created


# -- collections ----------------------------------------------------------------------------------
def register_run(registry: Registry, name: str, *, doc: str | None = None) -> None:
    """Create RUN collection ``name``, owned by the current user; an existing run must be theirs."""
    from .registry._collections import CollectionType

    with registry.transaction(write=True) as conn:
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


def register_collection(registry: Registry, name: str, type: CollectionType | str, *, doc: str | None = None
                        ) -> bool:
    """Create a collection of any type (a RUN is owned by the current user); whether it was new."""
    from .registry._collections import CollectionType

    ctype = CollectionType[type.upper()] if isinstance(type, str) else type
    owner = identity(registry.db) if ctype == CollectionType.RUN else None
    _, created = registry.collections.register(name, ctype, owner=owner, doc=doc)
    return created


def set_chain(registry: Registry, name: str, children: Sequence[str]) -> None:
    """Set the ordered children of CHAINED collection ``name`` (created if absent), in one transaction."""
    from .registry._collections import CollectionType

    with registry.transaction(write=True) as conn:
        registry.collections.register(name, CollectionType.CHAINED, conn=conn)
        registry.collections.set_chain(name, children, conn)


# -- the run of a write -----------------------------------------------------------------------------
class RunAccess:
    """The runs one Butler writes into, each checked once: a RUN collection owned by the current
    user (or written with ``allow_foreign_run``), or a valid name for a new one.

    `check` only fails fast, before files are staged; `ensure` checks again inside the write
    transaction, where it counts (`butler._ownership`), registering a new run there. Records are
    remembered until `clear` (`Butler.refresh`); a refusal re-reads the record first.
    """

    def __init__(self, registry: Registry, reserved: tuple[str, ...]) -> None:
        self._registry = registry
        self._reserved = reserved
        self._checked: dict[str, CollectionRecord] = {}

    def check(self, name: str, allow_foreign_run: bool) -> CollectionRecord | None:
        """The record of the run ``name`` a write goes into, None if it does not exist yet."""
        from .registry._collections import CollectionType

        registry = self._registry
        rec = self._checked.get(name) or registry.collections.find(name)
        if rec is None:
            from .registry._collections import validate_collection_name

            validate_collection_name(name, reserved=self._reserved)
            return None
        if rec.type != CollectionType.RUN:
            raise CollectionError(f"cannot write into {name!r}: it is a {rec.type.name} collection, not a RUN")
        user = identity(registry.db)
        if rec.owner and rec.owner != user and not allow_foreign_run:
            registry.collections.refresh()  # handed over to us since it was cached?
            fresh = registry.collections.find(name)
            if fresh is None or fresh.owner != rec.owner:
                self._checked.pop(name, None)
                return self.check(name, allow_foreign_run)
            require_owner(rec, user, action="write into it", allow_foreign=False)
        self._checked[name] = rec
        return rec

    def ensure(self, conn: Any, name: str, rec: CollectionRecord | None, *,
               allow_foreign_run: bool | None = None) -> CollectionRecord:
        """The record of RUN ``name`` in the write transaction ``conn``: registered now (owned by the
        current user) if absent, its row locked and its owner checked (see `_ownership.ensure_run`).
        ``rec`` is what `check` found; with ``allow_foreign_run=None`` the owner it accepted stays
        accepted."""
        from ._ownership import ensure_run as ensure_owned_run

        return ensure_owned_run(self._registry, conn, name, expected=rec, allow_foreign=allow_foreign_run)

    def remember(self, name: str, rec: CollectionRecord) -> None:
        self._checked[name] = rec

    def forget(self, name: str) -> None:
        """Drop what is known of ``name`` (after a failed write: it may not exist, or not be ours)."""
        self._checked.pop(name, None)
        self._registry.collections.forget(name)

    def clear(self) -> None:
        self._checked.clear()
