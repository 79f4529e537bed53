"""The Butler: one object to create, open, write, read and query a repository.

A Butler is its configuration (root, collections, run, mode): registries are shared by every
Butler of a repository in a process, so opening another one is a dictionary lookup, and a
pickled Butler is a few hundred bytes that reconnects when first used in a worker.

The methods with sizeable bodies delegate to one module per concern, as functions taking the
Butler: `_registration` (instruments, dataset types, collections, the run of a write),
`_reads` (finding a dataset), `_writes`,
`_ingest`, `_queries`, `_skymaps`, `_calibs`, `_provenance`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Self

# Opening a repository needs the registry (SQLAlchemy and its SQLite dialect): import it with
# the class, so `from butler import Butler` carries that cost and the first open does not
# (`import butler` alone stays cheap: ``Butler`` is one of its lazy attributes).
from . import _reads
from ._config import CONFIG_NAME, DEFAULT_SQLITE, RepoConfig
from ._dataset_ref import DatasetRef
from ._dataset_type import DatasetType, split_component
from .dimensions import DataCoordinate, DimensionUniverse
from .errors import ButlerError, CollectionError, ConflictError, DatasetNotFoundError, DatasetTypeError, ReadOnlyError
from .registry._database import Database
from .registry._registry import Registry
from .remote._urls import is_remote_url

if TYPE_CHECKING:
    from ._cleanup import CleanupReport
    from ._registration import RunAccess
    from ._typing import CollectionsLike, DataIdLike, DatasetTypeLike, RefOrTypeLike, TimeLike
    from .datastore._datastore import VerifyProblem
    from .datastore._interface import Datastore, DatastoreReader
    from .dimensions import DimensionRecord
    from .instrument import Instrument
    from .registry._collections import CollectionRecord, CollectionType
    from .registry._datasets import FileRecord, FoundDataset
    from .registry._interface import RegistryReader
    from .remote import RemoteRepository
    from .transfer import Bundle, ComparisonReport, ExportReport, ImportReport, TransferReport
    from .transfer._export import SelectedDataset

__all__ = ["Butler", "DeferredDatasetHandle"]

_REGISTRIES: dict[tuple[str, str | None], Registry] = {}


def _open_registry(config: RepoConfig) -> Registry:
    key = (config.db_url, config.namespace)
    registry = _REGISTRIES.get(key)
    if registry is None:
        registry = Registry.open(Database(config.db_url, config.namespace))
        _REGISTRIES[key] = registry
    return registry


class Butler:
    """A client of one repository.

    ``Butler(root)`` is read-only; ``Butler(root, run="u/alice/run1")`` writes into that run
    (created on first write, owned by the current user); ``Butler(root, writeable=True)`` is
    writeable with no default run, so each write names its run.

    Every read is checked against the checksum and size recorded at write time
    (`ChecksumError` if the file changed); ``verify_reads=False`` skips that check
    for trusted fast paths, at the caller's risk (damaged bytes may then decode as data).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        collections: str | Sequence[str] | None = None,
        run: str | None = None,
        writeable: bool | None = None,
        calibs: Mapping[str, str] | None = None,
        verify_reads: bool = True,
        token: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        upstream: str | os.PathLike[str] | None = None,
        _lazy: bool = False,
    ) -> None:
        self._remote: RemoteRepository | None = None
        if is_remote_url(root):
            if run is not None or writeable:
                raise ReadOnlyError(
                    f"{root} is a remote repository, which is read-only: drop run= and writeable=, and write "
                    "outputs to a local repository (Butler(local, upstream=...) reads inputs from this one)")
            from .remote import open_remote

            self._remote = open_remote(os.fspath(root), token=token, cache_dir=cache_dir)
        self._config = RepoConfig.read(os.fspath(root)) if self._remote is None else None
        if upstream is not None and self._remote is not None:
            raise ValueError(f"{root} is a remote repository: it cannot have an upstream (open a local repository "
                             "with upstream=... to cache a remote one's datasets)")
        self._upstream_location = None if upstream is None else os.fspath(upstream)
        self._upstream: Butler | None = None
        if run is not None and self._config is not None:
            from .registry._collections import validate_collection_name

            validate_collection_name(run, reserved=self._config.root_files)
        if writeable is False and run is not None:
            raise ValueError("a Butler with a run is writeable; drop run= or writeable=False")
        self.run = run
        self.writeable = bool(writeable) if writeable is not None else run is not None
        if collections is not None:
            from .registry._collections import check_collection_names

            collections = check_collection_names(collections)
        self.collections: tuple[str, ...] = tuple(collections) if collections else ((run,) if run else ())
        self.calibs = dict(calibs or {})
        self.verify_reads = verify_reads
        self._token = token
        self._cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self._reg: Registry | None = None
        self._store: Datastore | None = None
        self._run_access: RunAccess | None = None
        if not _lazy and self._remote is None:
            self._registry  # noqa: B018 - connect now so a bad repository fails at open
            if self.calibs:
                from ._calibs import check_calib_collections

                check_calib_collections(self._registry, self.calibs)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike[str],
        *,
        db: str | None = None,
        namespace: str | None = None,
        templates: Mapping[str, str] | None = None,
        formatters: Mapping[str, str] | None = None,
        universe: DimensionUniverse | None = None,
        run: str | None = None,
    ) -> Butler:
        """Create a repository at ``root`` (SQLite inside it unless ``db`` is a server URL)."""
        from .datastore._templates import TemplateSet
        from .registry._database import validate_namespace

        validate_namespace(namespace)  # it becomes a schema name in SQL: refuse before anything is written
        root = os.path.abspath(os.fspath(root))
        if os.path.exists(os.path.join(root, CONFIG_NAME)):
            raise ConflictError(f"{root} already holds a butler repository ({CONFIG_NAME} exists)")
        TemplateSet(templates)  # validate syntax before anything is written
        config = RepoConfig(root=root, db=db or DEFAULT_SQLITE, namespace=namespace,
                            templates=dict(templates or {}), formatters=dict(formatters or {}))
        created_dir = not os.path.exists(root)
        os.makedirs(root, exist_ok=True)
        relative = config.relative_sqlite
        if relative is not None and not os.path.exists(os.path.join(root, relative)):
            # A repository this process made here was deleted: its pooled connections still see the
            # deleted file (and its cached registry the old content). Forget both.
            from .registry._database import close_engine

            close_engine(config.db_url)
            _REGISTRIES.pop((config.db_url, namespace), None)
        try:
            database = Database(config.db_url, namespace)
            registry = Registry.create(database, universe or DimensionUniverse.default())
            config.write()
        except BaseException:
            if created_dir:
                shutil.rmtree(root, ignore_errors=True)
            raise
        _REGISTRIES[(config.db_url, namespace)] = registry
        return cls(root, run=run, writeable=True)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (
            _butler_from_pickle,
            (self.root, self.collections, self.run, self.writeable, self.calibs or None, self.verify_reads,
             self._token, self._cache_dir, self._upstream_location),
        )

    # -- internals ----------------------------------------------------------------------------
    @property
    def _registry(self) -> Registry:
        reg = self._reg
        if reg is None:
            remote = self._remote
            if remote is not None and remote.sql_registry is not None:  # a repository served as static files
                reg = self._reg = remote.sql_registry
            else:
                reg = self._reg = _open_registry(self._local_config())
        return reg

    def _local_config(self) -> RepoConfig:
        config = self._config
        if config is None:
            assert self._remote is not None
            raise self._remote.unsupported("this operation")
        return config

    @property
    def reader(self) -> RegistryReader:
        """The registry as reads see it: the SQL registry, or the client of a remote repository."""
        remote = self._remote
        return remote.registry if remote is not None else self._registry

    @property
    def datastore_reader(self) -> DatastoreReader:
        """The datastore as reads see it: the local files, or a remote repository's (fetched into a
        verified local cache)."""
        remote = self._remote
        return remote.datastore if remote is not None else self.datastore

    @property
    def upstream_location(self) -> str | None:
        """Where the upstream is (``upstream=``: a URL or a directory), or None."""
        return self._upstream_location

    @property
    def upstream(self) -> Butler | None:
        """The read-only repository this one reads missing inputs from (``upstream=``), or None."""
        if self._upstream is None and self._upstream_location is not None:
            self._upstream = Butler(self._upstream_location, collections=self.collections or None, token=self._token,
                                    cache_dir=self._cache_dir, calibs=self.calibs or None)
        return self._upstream

    def fetch_from_upstream(self, refs: Sequence[DatasetRef]) -> ImportReport:
        """Bring datasets of the upstream here (its refs): files verified against the upstream's checksums
        before anything is registered, ids, runs, records and provenance kept, all or nothing; datasets
        already here are skipped. Reads do this themselves for what they find upstream."""
        if self.upstream is None:
            raise ButlerError(f"{self.root} has no upstream: open it with Butler(root, upstream=URL)")
        from ._upstream import fetch
        from .transfer._import import import_bundle

        return fetch(self, refs, lambda bundle: import_bundle(self.registry, self.datastore, self._runs, bundle,
                                                               transfer="move"))

    @property
    def _served(self) -> RemoteRepository | None:
        """The client of `butler serve` when this Butler reads through one (not static hosting, whose
        SQL registry answers everything itself)."""
        remote = self._remote
        return remote if remote is not None and remote.sql_registry is None else None

    @property
    def is_remote(self) -> bool:
        """Whether this Butler reads a remote repository (read-only; see docs/remote.md)."""
        return self._remote is not None

    @property
    def datastore(self) -> Datastore:
        """The datastore behind this butler: where dataset files are and how they are read and written."""
        store = self._store
        if store is None:
            from .datastore._datastore import FileDatastore
            from .datastore._templates import TemplateSet

            registry = self._registry
            config = self._local_config()
            inst_templates = {name: info["templates"] for name, info in registry.instruments.items()}
            templates = TemplateSet(config.templates, inst_templates)
            store = self._store = FileDatastore(config.root, templates, config.formatters,
                                                implied=registry.data_ids.expand_implied)
        return store

    @property
    def root(self) -> str:
        """The repository's root directory, or the URL of a remote repository."""
        if self._config is None:
            assert self._remote is not None
            return self._remote.url
        return self._config.root

    @property
    def universe(self) -> DimensionUniverse:
        return self.reader.universe

    @property
    def registry(self) -> Registry:
        """The registry behind this butler (for advanced use and tests)."""
        return self._registry

    def require_writeable(self) -> None:
        """Raise `ReadOnlyError` unless this Butler may write."""
        if self._remote is not None:
            raise ReadOnlyError(f"{self.root} is a remote repository, which is read-only: write into a local "
                                "repository (Butler(local, upstream=...) reads its inputs from this one)")
        if not self.writeable:
            raise ReadOnlyError(
                f"this Butler of {self.root} is read-only; open it with run='...' or writeable=True to write"
            )

    def search_path(self, collections: CollectionsLike = None) -> str | Sequence[str]:
        """The collections a read searches: ``collections``, else this Butler's (`CollectionError`
        when neither names any)."""
        wanted = collections if collections is not None else self.collections
        if not wanted:
            raise CollectionError(
                "no collections to search: pass collections=... to this call or to Butler(...)"
            )
        return wanted

    @property
    def _runs(self) -> RunAccess:
        runs = self._run_access
        if runs is None:
            from ._registration import RunAccess

            runs = self._run_access = RunAccess(self._registry, self._local_config().root_files)
        return runs

    def _write_run(self, run: str | None) -> str:
        """The run a write goes into: ``run``, else this Butler's."""
        self.require_writeable()
        name = run if run is not None else self.run
        if name is None:
            raise ButlerError("no run to write into: pass run=... to this call or open the Butler with run=...")
        return name

    # -- registration -------------------------------------------------------------------------
    def register_instrument(self, instrument: Instrument | str, *, update: bool = False, calibs: bool = True) -> None:
        """Register a camera (an ``Instrument``, its name, class path or YAML path) and its records.

        With ``calibs`` (default) also create the ``<instrument>/calib`` chain and certify the camera
        there (see docs/calibrations.md)."""
        self.require_writeable()
        from ._registration import register_instrument

        inst, new = register_instrument(self.registry, instrument, update=update)
        if update:
            self._registry.data_ids.clear()  # implied values may come from replaced records
        self._store = None  # the datastore's templates include the instrument's
        if calibs and new:  # first registration only: re-registering is a no-op
            from ._calibs import setup_instrument_calibs

            setup_instrument_calibs(self, inst)  # <instrument>/calib chain and the camera (issue 7)

    def insert_dimension_records(self, element: str, records: Iterable[Mapping[str, Any]], *,
                                 conflict: str = "error") -> int:
        """Insert records of a dimension element; ``conflict`` is "error", "skip" or "replace"."""
        self.require_writeable()
        n = self._registry.records.insert(element, records, conflict=conflict)
        if conflict == "replace":  # implied values (a visit's band, day) cached from the old records
            self._registry.data_ids.clear()
        return n

    def register_dataset_type(self, dataset_type: DatasetType) -> bool:
        """Register a dataset type (idempotent); return whether it was new.

        The storage class must exist and every file template that could apply must make unique
        paths for the type's data IDs; a conflicting existing definition is a ``ConflictError``.
        """
        self.require_writeable()
        from ._registration import register_dataset_type

        return register_dataset_type(self.registry, self.datastore, dataset_type)

    # -- skymaps and regions -------------------------------------------------------------------
    def register_skymap(self, skymap: Any, tracts: Iterable[int] | int | None = None) -> int:
        """Register a skymap's tracts and patches (with regions and spatial index), or only ``tracts``
        and their patches; returns how many tracts were added (0: all were registered already)."""
        from ._skymaps import register_skymap

        self.require_writeable()
        return register_skymap(self._registry, skymap, tracts)

    def register_flavors(self, flavors: Iterable[str | Mapping[str, Any]]) -> int:
        """Register coadd flavors (records or strings such as "deep", "nightly-20261124"; see
        ``butler.flavors``); returns how many were new."""
        from .flavors import register_flavors

        self.require_writeable()
        return register_flavors(self._registry, flavors)

    def get_skymap(self, name: str) -> Any:
        """The registered skymap ``name``, rebuilt from its stored configuration."""
        from ._skymaps import load_skymap

        return load_skymap(self.reader, name)

    def define_visits(self, instrument: str, *, where: str | None = None, update: bool = False,
                      exposures: Iterable[int] | None = None) -> int:
        """Define visits (one per exposure) with regions from boresight + camera geometry."""
        from ._skymaps import define_visits

        return define_visits(self, instrument, where=where, update=update, exposures=exposures)

    def update_regions(self, element: str, records: Iterable[Mapping[str, Any]]) -> int:
        """Replace regions of existing records (e.g. after a better WCS); queries see them at once."""
        self.require_writeable()
        return self._registry.records.update_regions(element, records)

    def packer(self, kind: str, **data_id: Any) -> Any:
        """A data ID packer: "tract_patch" / "tract_patch_band" (give skymap=, and bands= for the
        latter) or "visit_detector" / "exposure_detector" (give instrument=), or the joint
        "instrument_visit_detector" / "instrument_exposure_detector" (all instruments; issue 7)."""
        if kind.startswith("instrument_"):
            from ._multi_instrument import joint_packer

            return joint_packer(self._registry, kind, data_id.pop("instruments", None))
        from ._skymaps import data_id_packer

        return data_id_packer(self._registry, kind, **data_id)

    def get_dataset_type(self, name: str) -> DatasetType:
        """The registered dataset type ``name`` (here, else in the upstream)."""
        if self._upstream_location is not None:
            try:
                return self.reader.dataset_type(name)
            except DatasetTypeError:
                upstream = self.upstream
                assert upstream is not None
                return upstream.get_dataset_type(name)
        return self.reader.dataset_type(name)

    @property
    def user(self) -> str:
        """Who this Butler is to the repository: the owner of the runs it creates, and the name its
        writes and removals are checked against (the database role on PostgreSQL and MySQL; the OS
        account, or ``$BUTLER_USER``, on SQLite)."""
        from ._ownership import identity

        return identity(self._registry.db)

    def register_run(self, name: str, *, doc: str | None = None) -> None:
        """Create RUN ``name`` owned by `user` (an existing run must be theirs)."""
        self.require_writeable()
        from ._registration import register_run

        register_run(self.registry, name, doc=doc)

    def chown_run(self, run: str, new_owner: str) -> None:
        """Hand RUN ``run`` over to ``new_owner`` (only its owner may; on PostgreSQL and MySQL the new
        owner must be an existing role). Afterwards only ``new_owner`` writes into it or removes it."""
        self.require_writeable()
        from ._ownership import chown_run

        chown_run(self._registry, run, new_owner)
        self._runs.forget(run)

    def check_run_access(self, run: str | None = None) -> None:
        """Raise unless this Butler may write into ``run`` (default: its own): a valid new name, or
        an existing RUN owned by `user` (`RunOwnershipError`, `CollectionError`, `ReadOnlyError`)."""
        name = self._write_run(run)
        self._runs.check(name, False)

    def lock_run(self, run: str, *, action: str = "execute") -> AbstractContextManager[None]:
        """Hold the lock of RUN ``run`` exclusively (across processes on this file system): while it
        is held, writes into the run, its removal and its clean-up by others wait or are refused with
        `RunLockedError` naming the holder. Executors hold it for a whole execution."""
        from ._run_lock import run_lock

        return run_lock(self.root, run, action=action)

    def register_collection(self, name: str, type: CollectionType | str, *, doc: str | None = None) -> bool:
        """Create a TAGGED, CHAINED or CALIBRATION collection (or a RUN); return whether it was new."""
        self.require_writeable()
        from ._registration import register_collection

        return register_collection(self.registry, name, type, doc=doc)

    def set_chain(self, name: str, children: Sequence[str]) -> None:
        """Set the ordered children of a CHAINED collection (created if absent)."""
        self.require_writeable()
        from ._registration import set_chain

        set_chain(self.registry, name, children)

    def get_chain(self, name: str) -> list[str]:
        return self.reader.chain_children(name)

    def associate(self, collection: str, refs: Iterable[DatasetRef]) -> None:
        """Add refs to a TAGGED collection (set-based); a different ref for the same data ID conflicts."""
        self.require_writeable()
        from ._writes import associate

        associate(self.registry, collection, refs)

    # -- calibrations (issue 7; see butler/_calibs.py) ------------------------------------------
    def certify(self, collection: str, refs: Iterable[DatasetRef], valid_from: TimeLike = None,
                valid_to: TimeLike = None,
                *, split: bool = False) -> int:
        """Certify calibration refs into a CALIBRATION collection (created if absent) for the
        half-open range [valid_from, valid_to) (None: unbounded). An overlap with a range already
        certified for the same type and data ID is a ConflictError unless ``split=True``."""
        from ._calibs import certify

        self.require_writeable()
        return certify(self._registry, collection, refs, valid_from, valid_to, split=split, root=self.root)

    def decertify(self, collection: str, dataset_type: str, valid_from: TimeLike = None, valid_to: TimeLike = None,
                  *, data_id: DataIdLike = None, **kwargs: Any) -> int:
        """Remove [valid_from, valid_to) from the validity ranges of a type (of one data ID if given)."""
        from ._calibs import decertify

        self.require_writeable()
        return decertify(self._registry, collection, dataset_type, valid_from, valid_to, data_id=data_id, **kwargs)

    def find_calibs(self, dataset_type: str, pairs: Sequence[tuple[DataIdLike, TimeLike]],
                    collections: CollectionsLike = None
                    ) -> dict[tuple[DataCoordinate, int], DatasetRef]:
        """Set-based lookup: {(data ID, time ns): ref} of the calibs valid at each (data ID, time)."""
        from ._calibs import find_calibs

        return find_calibs(self._registry, self.calibs, dataset_type, pairs, collections)

    def query_calibrations(self, collections: CollectionsLike, dataset_type: str, *, data_id: DataIdLike = None,
                           time: TimeLike = None,
                           **kwargs: Any) -> list[dict[str, Any]]:
        """Certified validity ranges of a type in CALIBRATION collections."""
        from ._calibs import query_calibrations

        return query_calibrations(self._registry, collections, dataset_type, data_id=data_id, time=time, **kwargs)

    def certify_camera(self, instrument: Instrument | str, valid_from: TimeLike, valid_to: TimeLike = None, *,
                       collection: str | None = None) -> DatasetRef:
        """Store a camera version and certify it for [valid_from, valid_to) (default collection
        ``<instrument>/calib/unbounded``), cutting earlier versions where it applies."""
        from ._calibs import certify_camera

        return certify_camera(self, instrument, valid_from, valid_to, collection=collection)

    # -- writes -------------------------------------------------------------------------------
    def put(self, obj: Any, dataset_type: DatasetTypeLike, data_id: DataIdLike = None, *, run: str | None = None,
            replace: bool = False, allow_foreign_run: bool = False, **kwargs: Any) -> DatasetRef:
        """Store ``obj`` as one dataset and return its ref.

        A dataset with the same type and data ID already in the run is a ``ConflictError`` unless
        ``replace=True``. Nothing is left behind on any error.
        """
        refs = self.put_many([(obj, dataset_type, data_id, kwargs)], run=run, replace=replace,
                             allow_foreign_run=allow_foreign_run)
        return refs[0]

    def put_many(self, items: Iterable[tuple[Any, ...]], *, run: str | None = None, replace: bool = False,
                 allow_foreign_run: bool = False) -> list[DatasetRef]:
        """Store many objects in one transaction: ``items`` are ``(obj, dataset_type, data_id[, kwargs])``."""
        from ._writes import put_many

        name = self._write_run(run)
        return put_many(self.registry, self.datastore, self._runs, items, run=name, replace=replace,
                        allow_foreign_run=allow_foreign_run)

    def ingest(self, dataset_type: str, files: Iterable[tuple[str | os.PathLike[str], DataIdLike]], *,
               run: str | None = None, transfer: str = "copy", allow_foreign_run: bool = False) -> list[DatasetRef]:
        """Register existing files as datasets in one transaction (set-based).

        ``transfer`` is "copy", "move", "hardlink", "symlink" or "direct" (keep the file where it
        is; its absolute path is recorded). Checksums and sizes are computed from the files.
        """
        from ._ingest import ingest_files

        name = self._write_run(run)
        return ingest_files(self.registry, self.datastore, self._runs, dataset_type, files, run=name,
                            transfer=transfer, allow_foreign_run=allow_foreign_run)

    def intend_writes(self, refs: Sequence[DatasetRef]) -> None:
        """Journal the files that other processes (an executor's workers) are about to write for
        ``refs`` and that this process registers later: a crash in between leaves only files that
        `cleanup` knows to remove. For executors; ``put`` does this itself."""
        self.require_writeable()
        from ._writes import intend_writes

        intend_writes(self.registry, self.datastore, refs)

    def register_outputs(self, run: str, outputs: Sequence[tuple[DatasetRef, Sequence[FileRecord]]], *,
                         provenance: Sequence[Mapping[str, Any]] = ()) -> None:
        """Register datasets whose files an executor's workers wrote (``datastore.write_unregistered``,
        after `intend_writes`), with the provenance records of their quanta, in one transaction. For
        executors; see `butler.provenance` for the record fields."""
        self.require_writeable()
        from ._writes import register_outputs

        register_outputs(self.registry, self.datastore, run, outputs, provenance=provenance)

    def remove(self, refs: Iterable[DatasetRef], *, allow_foreign_run: bool = False) -> int:
        """Delete datasets (rows and files); returns how many were removed.

        Every run holding them must be yours (`user`), else ``RunOwnershipError`` and nothing is
        removed, unless ``allow_foreign_run=True``."""
        self.require_writeable()
        from ._writes import remove

        return remove(self.registry, self.datastore, refs, allow_foreign_run=allow_foreign_run)

    def remove_runs(self, pattern: str | Sequence[str], *, allow_foreign_run: bool = False) -> list[str]:
        """Delete RUN collections matching the glob(s), with their datasets and files.

        Every matching run must be yours (`user`), else ``RunOwnershipError`` and nothing is
        removed, unless ``allow_foreign_run=True``."""
        self.require_writeable()
        from ._writes import remove_runs

        return remove_runs(self.registry, self.datastore, self._runs, pattern, allow_foreign_run=allow_foreign_run)

    # -- reads --------------------------------------------------------------------------------
    def find_dataset(self, dataset_type: DatasetTypeLike, data_id: DataIdLike = None, *,
                     collections: CollectionsLike = None,
                     **kwargs: Any) -> DatasetRef | None:
        found = self._find(dataset_type, data_id, collections, kwargs, required=False)
        return found.ref if found else None

    def _find(self, dataset_type: RefOrTypeLike, data_id: DataIdLike, collections: CollectionsLike,
              kwargs: Mapping[str, Any], *, required: bool = True) -> FoundDataset | None:
        if self._upstream_location is not None:
            from . import _upstream

            return _upstream.find(self, dataset_type, data_id, collections, kwargs, required=required)
        served = self._served
        if served is not None and isinstance(dataset_type, (str, DatasetType)):
            name = split_component(dataset_type if isinstance(dataset_type, str) else dataset_type.name)[0]
            if self.reader.dataset_type(name).is_calibration:  # found by validity time, by the server
                found = served.find_calibration(name, {**(dict(data_id) if data_id else {}), **kwargs},
                                                collections if collections is not None else self.calibs.get(name))
                if found is None and required:
                    raise DatasetNotFoundError(f"no {name!r} valid for {dict(data_id or {}, **kwargs)} in "
                                               f"{collections or self.calibs.get(name) or '<instrument>/calib'} of "
                                               f"{self.root}")
                return found
        return _reads.find(self, dataset_type, data_id, collections, kwargs, required=required)

    def find_datasets(self, dataset_type: str, data_ids: Sequence[DataCoordinate], *,
                      collections: CollectionsLike = None) -> dict[DataCoordinate, DatasetRef]:
        """Set-based `find_dataset`: the first ref along the search path for each of ``data_ids``
        (data IDs of the type's dimensions; those not found are absent), in one query."""
        searched = self.search_path(collections)
        if self._upstream_location is not None:  # each collection asked of its side, in order
            from ._upstream import find_datasets

            return find_datasets(self, dataset_type, data_ids, _names(searched))
        return self.reader.find_datasets(dataset_type, data_ids, searched)

    def observation_times(self, element: str, keys: Iterable[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
        """Begin times (ns) and implied values of exposures or visits ``(instrument, id)``, set-based."""
        upstream = self.upstream
        if upstream is not None:  # the records of the upstream (this repository has those of what it cached)
            return upstream.observation_times(element, keys)
        if self._served is not None:
            return self._served.observation_times(element, keys)
        return self._registry.records.observation_times(element, keys)

    def get(self, dataset_type: RefOrTypeLike, data_id: DataIdLike = None, *, collections: CollectionsLike = None,
            component: str | None = None, parameters: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Read a dataset (``component=`` for one part of a composite, ``parameters=`` e.g. a bbox)."""
        found = self._find(dataset_type, data_id, collections, kwargs)
        assert found is not None
        if component is None and isinstance(dataset_type, str):
            component = split_component(dataset_type)[1]
        return self.datastore_reader.read(found.ref, found.files, component=component, parameters=parameters,
                                           verify=self.verify_reads)

    def get_deferred(self, dataset_type: RefOrTypeLike, data_id: DataIdLike = None, *,
                     collections: CollectionsLike = None, **kwargs: Any) -> DeferredDatasetHandle:
        """Find the dataset now; read it later with ``handle.get(...)``."""
        found = self._find(dataset_type, data_id, collections, kwargs)
        assert found is not None
        return DeferredDatasetHandle(self, found)

    def exists(self, dataset_type: RefOrTypeLike, data_id: DataIdLike = None, *, collections: CollectionsLike = None,
               **kwargs: Any) -> bool:
        """Whether the dataset is registered and its file is present (here, or in the upstream)."""
        if self._upstream_location is not None:
            try:
                here = _reads.find(self, dataset_type, data_id, collections, kwargs, required=False)
            except (CollectionError, LookupError, ValueError):
                here = None
            if here is not None and here.files and self.datastore_reader.has_files(here.files):
                return True
            upstream = self.upstream
            assert upstream is not None
            return upstream.exists(dataset_type, data_id, collections=self.search_path(collections), **kwargs)
        found = self._find(dataset_type, data_id, collections, kwargs, required=False)
        if found is None or not found.files:
            return False
        return self.datastore_reader.has_files(found.files)

    # -- queries ------------------------------------------------------------------------------
    def query_datasets(self, dataset_type: DatasetTypeLike, *, collections: CollectionsLike = None,
                       where: str | None = None,
                       bind: Mapping[str, Any] | None = None, data_id: DataIdLike = None, find_first: bool | None = None,
                       **kwargs: Any) -> list[DatasetRef]:
        """Refs of one dataset type matching data ID constraints and a where-expression."""
        searched = collections if collections is not None else self.collections
        if self._upstream_location is not None:  # each collection asked of its side, in order
            from ._upstream import query_datasets

            def query(side: Butler, dataset_type: Any, names: list[str], first: bool | None) -> list[DatasetRef]:
                return side.reader.query_datasets(dataset_type, collections=names, where=where, bind=bind,
                                                  data_id=data_id, find_first=first, **kwargs)

            return query_datasets(self, dataset_type, _names(self.search_path(searched)), find_first, query)
        return self.reader.query_datasets(dataset_type, collections=searched, where=where, bind=bind,
                                          data_id=data_id, find_first=find_first, **kwargs)

    def query_data_ids(self, dimensions: str | Iterable[str], *, where: str | None = None,
                       bind: Mapping[str, Any] | None = None, data_id: DataIdLike = None,
                       datasets: str | Iterable[str] | None = None, collections: CollectionsLike = None,
                       **kwargs: Any) -> list[DataCoordinate]:
        """Data IDs of the given dimensions (with implied values) that exist and match the constraints."""
        searched = collections if collections is not None else self.collections
        upstream = self.upstream
        if upstream is not None:  # both sides' (the upstream's first): records of what is here may be here only
            from ._upstream import segments, union

            wanted = _names(self.search_path(searched)) if datasets is not None else []
            sides = segments(self, wanted) if wanted else [(False, []), (True, [])]
            found: list[DataCoordinate] = []
            for local, names in sides:
                side = self if local else upstream
                try:
                    more = side.reader.query_data_ids(dimensions, where=where, bind=bind, data_id=data_id,
                                                      datasets=datasets, collections=names or None, **kwargs)
                except (DatasetTypeError, CollectionError):  # a type or collection of the other side only
                    continue
                found = union(found, more, lambda c: c)
            return found
        return self.reader.query_data_ids(dimensions, where=where, bind=bind, data_id=data_id, datasets=datasets,
                                          collections=searched, **kwargs)

    def query_dimension_records(self, element: str, *, where: str | None = None,
                                bind: Mapping[str, Any] | None = None, data_id: DataIdLike = None,
                                **kwargs: Any) -> list[DimensionRecord]:
        upstream = self.upstream
        if upstream is not None:  # the upstream's, then those only here (a skymap registered here)
            from ._upstream import union

            theirs = upstream.query_dimension_records(element, where=where, bind=bind, data_id=data_id, **kwargs)
            ours = self.reader.query_dimension_records(element, where=where, bind=bind, data_id=data_id, **kwargs)
            columns = self.universe[element].primary_key_columns
            return union(theirs, ours, lambda r: tuple(r[c] for c in columns))
        return self.reader.query_dimension_records(element, where=where, bind=bind, data_id=data_id, **kwargs)

    def query_dataset_types(self, pattern: str = "*") -> list[DatasetType]:
        return self.reader.query_dataset_types(pattern)

    def query_collections(self, pattern: str | Sequence[str] = "*", *, types: Iterable[Any] | None = None
                          ) -> list[str]:
        from .registry._collections import CollectionType

        if types is not None:
            types = [CollectionType[t.upper()] if isinstance(t, str) else t for t in types]
        return [r.name for r in self.reader.query_collections(pattern, types)]

    def collection_info(self, name: str) -> CollectionRecord:
        return self.reader.collection(name)

    # -- repositories that travel (issue 12; see butler/transfer/) --------------------------------
    def get_uri(self, ref: DatasetRef) -> str:
        """The absolute path of the dataset's file (a zarr store's directory), for standard tools."""
        return self.get_uris([ref])[0]

    def get_uris(self, refs: Sequence[DatasetRef]) -> list[str]:
        """`get_uri` of many refs, with one query per 5,000 refs."""
        if self._remote is not None:
            return [self._remote.uri(ref, ref.component or "") for ref in refs]
        from .transfer._uris import get_uris

        return get_uris(self._registry, self.datastore, refs)

    def export(self, path: str | os.PathLike[str], *, collections: str | Sequence[str] | None = None,
               where: str | None = None, bind: Mapping[str, Any] | None = None,
               dataset_types: str | Iterable[str] | None = None, include_files: bool = True, chains: bool = True,
               verify: bool = False, refs: Sequence[DatasetRef | SelectedDataset] | None = None) -> ExportReport:
        """Write the datasets of ``collections`` (every run's copy; all dataset types unless given;
        matching ``where``), or exactly ``refs``, with what they need to a bundle: a ``.zip`` file,
        else a directory (see docs/transfers.md). ``verify`` re-reads every file against its checksum first."""
        if self._remote is not None:
            if refs is None or collections is not None or where is not None or dataset_types is not None:
                raise self._remote.unsupported("an export by collections")
            return self._remote.export(os.fspath(path), refs)
        from .transfer._export import export_bundle

        return export_bundle(self._registry, self.datastore, path, collections=collections, where=where,
                             bind=bind, dataset_types=dataset_types, include_files=include_files, chains=chains,
                             verify=verify, refs=refs)

    def import_(self, bundle: str | os.PathLike[str] | Bundle, *, transfer: str = "copy",
                allow_foreign_run: bool = False) -> ImportReport:
        """Import a bundle (see `export`): every checksum is verified before anything is registered,
        all or nothing, idempotent (datasets already here with the same id and content are skipped);
        conflicting datasets, dimension records, collections or runs of somebody else are refused,
        naming them, and nothing changes. ``transfer``: "copy", "hardlink", "move" (from a directory
        bundle) or "auto" (hard links where possible)."""
        self.require_writeable()
        from .transfer._import import import_bundle

        return import_bundle(self.registry, self.datastore, self._runs, bundle, transfer=transfer,
                             allow_foreign_run=allow_foreign_run)

    def transfer_from(self, source: Butler | str | os.PathLike[str], refs: Iterable[DatasetRef] | None = None, *,
                      collections: str | Sequence[str] | None = None, where: str | None = None,
                      bind: Mapping[str, Any] | None = None, dataset_types: str | Iterable[str] | None = None,
                      transfer: str = "auto", allow_foreign_run: bool = False,
                      batch_size: int | None = None) -> TransferReport:
        """Copy datasets of the repository ``source`` here with their files, dimension records, dataset
        types, collections and provenance (ids kept): ``refs`` (from ``source.query_datasets``), or
        every run's copy of those in ``collections`` matching ``where`` / ``dataset_types``.

        ``collections`` also brings their chains, TAGGED memberships and validity ranges (without it,
        those of every TAGGED / CALIBRATION collection holding a ref). Checked and refused like
        `import_`; every file is verified against its recorded checksum before its batch is
        registered; ``transfer``: "auto" (hard links on one file system, else copies), "copy" or
        "hardlink". Resumable: batches of ``batch_size`` (10,000) datasets are committed one by one,
        and a rerun skips what is here already (see docs/transfers.md)."""
        self.require_writeable()
        from ._cleanup import cleanup
        from .transfer._transfer import BATCH_SIZE, transfer_datasets

        src = source if isinstance(source, Butler) else Butler(source)
        registry, datastore = self._registry, self.datastore

        def clean(runs: Sequence[str]) -> CleanupReport:
            from .datastore._datastore import FileDatastore

            assert isinstance(datastore, FileDatastore)  # clean-up works on local files
            return cleanup(registry, datastore, runs, user=self.user, allow_foreign_run=allow_foreign_run)

        return transfer_datasets(src._registry, src.datastore, registry, datastore, self._runs,
                                 None if refs is None else list(refs), collections=collections, where=where,
                                 bind=bind, dataset_types=dataset_types, transfer=transfer,
                                 allow_foreign_run=allow_foreign_run, batch_size=batch_size or BATCH_SIZE,
                                 cleanup=clean)

    @staticmethod
    def compare(a: Butler | str | os.PathLike[str], b: Butler | str | os.PathLike[str], *,
                collections: str | Sequence[str] | None = None,
                dataset_types: str | Iterable[str] | None = None) -> ComparisonReport:
        """Compare two repositories' content by (dataset type, data ID, run, file checksums), not ids."""
        from .transfer._compare import compare_registries

        left, right = (x if isinstance(x, Butler) else Butler(x) for x in (a, b))
        return compare_registries(left._registry, right._registry, names=(left.root, right.root),
                                  collections=collections, dataset_types=dataset_types)

    # -- provenance -----------------------------------------------------------------------------
    def provenance(self, ref: DatasetRef) -> dict[str, Any] | None:
        """How ``ref`` was made: task, data ID, input ids, config digest, host, times, status."""
        if self._served is not None:
            return self._served.provenance(ref)
        from ._provenance import provenance_of

        return provenance_of(self._registry, ref)

    def recorded_inputs(self, refs: Sequence[DatasetRef]) -> list[str | None]:
        """For each ref, the input ids recorded by the quantum that wrote it, in their stored text form
        (see `butler.provenance`), or None where no quantum wrote it (one query for any number of refs)."""
        if self._served is not None:
            return self._served.recorded_inputs(refs)
        from ._provenance import recorded_inputs

        return recorded_inputs(self._registry, refs)

    def query_provenance(self, *, run: str | None = None, task: str | None = None,
                         status: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Quantum records of pipeline executions (e.g. the failures of a run), with their output ids."""
        if self._served is not None:
            return self._served.query_provenance(run=run, task=task, status=status)
        from ._provenance import query_provenance

        return query_provenance(self._registry, run=run, task=task, status=status)

    # -- maintenance ----------------------------------------------------------------------------
    def refresh(self) -> None:
        """See dataset types, collections, instruments and records added by other processes."""
        if self._remote is not None:
            self._remote.registry.refresh()
            return
        self._registry.refresh()
        self._registry.refresh_attributes()
        self._store = None
        if self._run_access is not None:
            self._run_access.clear()
        self._registry.data_ids.clear()

    def verify(self, *, collections: CollectionsLike = None, orphans: bool | None = None) -> list[VerifyProblem]:
        """Recompute the checksum and size of every file (of the given collections) and list problems.

        Also lists what interrupted writes left (files the journal names: `cleanup` removes them)
        and, with ``orphans`` (default: when verifying the whole repository), every other file
        under the root that the registry does not know.
        """
        from ._cleanup import leftovers

        registry = self.registry
        with registry.transaction() as conn:
            ids = None if collections is None else [c.id for c in registry.collections.resolve(collections, conn)]
            records = registry.datasets.file_checks(ids, conn)
        problems = self.datastore.verify(records)
        return problems + leftovers(registry, self.datastore, walk=collections is None if orphans is None else orphans)

    def cleanup(self, runs: str | Sequence[str] | None = None, *, allow_foreign_run: bool = False) -> CleanupReport:
        """Remove what interrupted writes left in ``runs`` (default: all of yours), as journaled.

        Never removes a file that any dataset references, nor one the journal does not name;
        each run is cleaned under its lock (skipped while an executor or writer uses it).
        """
        from ._cleanup import cleanup

        self.require_writeable()
        return cleanup(self._registry, self.datastore, [runs] if isinstance(runs, str) else runs, user=self.user,
                       allow_foreign_run=allow_foreign_run)

    def close(self) -> None:
        """Close the connections of a remote repository (and of the upstream): kept-alive HTTP
        connections, ssh children; do not use the Butler afterwards. (A local registry's pooled
        connections are shared by every Butler of the repository in the process and stay open.)"""
        if self._remote is not None:
            self._remote.transport.close()
        if self._upstream is not None:
            self._upstream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = f"run={self.run!r}" if self.run else ("writeable" if self.writeable else "read-only")
        if self._remote is not None:
            mode += ", remote"
        return f"Butler({self.root!r}, collections={list(self.collections)}, {mode})"


class DeferredDatasetHandle:
    """A found dataset whose bytes have not been read yet."""

    __slots__ = ("_butler", "_found")

    def __init__(self, butler: Butler, found: FoundDataset):
        self._butler = butler
        self._found = found

    @property
    def ref(self) -> DatasetRef:
        return self._found.ref

    def get(self, *, component: str | None = None, parameters: Mapping[str, Any] | None = None) -> Any:
        return self._butler.datastore_reader.read(self._found.ref, self._found.files, component=component,
                                            parameters=parameters, verify=self._butler.verify_reads)


def _names(collections: CollectionsLike) -> list[str]:
    return [collections] if isinstance(collections, str) else list(collections or ())


def _butler_from_pickle(root: str, collections: tuple[str, ...], run: str | None, writeable: bool,
                        calibs: dict[str, str] | None, verify_reads: bool = True, token: str | None = None,
                        cache_dir: str | None = None, upstream: str | None = None) -> Butler:
    return Butler(root, collections=collections or None, run=run, writeable=writeable, calibs=calibs,
                  verify_reads=verify_reads, token=token, cache_dir=cache_dir, upstream=upstream, _lazy=True)
