"""Export datasets of some collections to a bundle (see docs/transfers.md).

The exported datasets are those ``query_datasets`` finds in the collections (every run's copy, not
only the first found), of every dataset type unless told which, restricted by a where-expression.
The bundle also gets what an importer needs to make them meaningful: their dataset types, the
collections searched (with chains and their children if ``chains``) and every run holding an
exported dataset, the TAGGED memberships and CALIBRATION validity ranges of the exported datasets,
the dimension records their data IDs need (transitively: a visit's physical_filter, band, day_obs,
instrument...), the registered instruments, and the provenance of the datasets a pipeline made.

Per dataset type, rows stream from one query (dataset, data ID, run, file records) in batches
that go to the bundle's parquet table while the files are copied; the memory held is the
distinct dimension keys (for the records), the run names and the quantum ids, not the datasets.
Checksums and sizes are the repository's records; files are re-read only with ``verify=True``.
"""

from __future__ import annotations

import fnmatch
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..datastore._directory_io import MANIFEST_PREFIX, verify_path
from ..errors import ChecksumError, CollectionError, DatasetNotFoundError
from ..registry._bulk_reads import DatasetSelection
from ..registry._collections import CollectionType, check_collection_names
from ._format import DIRECT_DIR, BundleCollection
from ._writer import BundleWriter

if TYPE_CHECKING:
    from .._dataset_ref import DatasetRef
    from ..datastore._interface import Datastore
    from ..registry._collections import CollectionRecord
    from ..registry._dataset_types import DatasetTypeRecord
    from ..registry._registry import Registry

__all__ = ["ExportReport", "SelectedDataset", "dataset_types_to_export", "export_bundle"]


class SelectedDataset(Protocol):
    """What export needs of a dataset chosen by the caller: its type (or type name) and id."""

    @property
    def dataset_type(self) -> Any: ...
    @property
    def id(self) -> uuid.UUID: ...

_GLOB = "*?["


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportReport:
    """What an export wrote."""

    path: str
    datasets: int
    files: int
    bytes: int
    dataset_types: dict[str, int] = field(default_factory=dict)
    """Datasets per dataset type."""
    collections: list[str] = field(default_factory=list)
    records: dict[str, int] = field(default_factory=dict)
    """Dimension records per element."""
    quanta: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"exported {self.datasets} datasets ({self.files} files, {self.bytes:,} bytes) of "
                f"{len(self.dataset_types)} dataset types in {len(self.collections)} collections, "
                f"{sum(self.records.values())} dimension records and {self.quanta} quanta to {self.path} "
                f"in {self.seconds:.2f} s")


def export_bundle(registry: Registry, datastore: Datastore, path: str | os.PathLike[str], *,
                  collections: str | Sequence[str] | None, where: str | None = None,
                  bind: Mapping[str, Any] | None = None, dataset_types: str | Iterable[str] | None = None,
                  include_files: bool = True, chains: bool = True, verify: bool = False,
                  refs: Sequence[DatasetRef | SelectedDataset] | None = None) -> ExportReport:
    """Write the bundle; see `Butler.export`. Nothing is left at ``path`` on any error.

    With ``refs``, exactly those datasets are exported (``where`` and ``dataset_types`` do not
    apply); ``collections`` then only adds collections (chains, TAGGED and CALIBRATION memberships
    of the refs in them); without it, the TAGGED and CALIBRATION collections holding any of the refs
    are exported with those memberships."""
    start = time.perf_counter()
    names = check_collection_names(collections) if collections is not None else []
    if not names and refs is None:
        raise CollectionError("export needs the collections to export from: pass collections=[...] (-c ...)")
    bulk = registry.bulk_reads
    with registry.transaction() as conn, BundleWriter(path, universe=registry.universe,
                                                         include_files=include_files,
                                                         source=datastore.root) as writer:
        searched = registry.collections.resolve(names, conn) if names else []
        by_type: dict[str, list[uuid.UUID]] = {}
        if refs is not None:
            for ref in refs:
                type_name = ref.dataset_type if isinstance(ref.dataset_type, str) else ref.dataset_type.name
                by_type.setdefault(type_name, []).append(ref.id)
            type_recs, explicit = [registry.dataset_types.get(n) for n in sorted(by_type)], set[str]()
            if not names:  # every TAGGED / CALIBRATION collection; only those holding a ref are exported
                searched = registry.collections.query("*", (CollectionType.TAGGED, CollectionType.CALIBRATION))
        else:
            type_recs, explicit = _dataset_types(registry, dataset_types)
        keys: dict[str, set[tuple[Any, ...]]] = {}
        runs: set[str] = set()
        quantum_ids: set[str] = set()
        counts: dict[str, int] = {}
        used: set[str] = set()  # collections holding an exported dataset (tags, validity ranges)
        builder = registry.query_builder
        for type_rec in type_recs:
            if refs is not None:
                selection = DatasetSelection(type_rec, None, tuple(dict.fromkeys(by_type[type_rec.dataset_type.name])))
            else:
                selection = bulk.select_datasets(conn, type_rec, searched, builder, where=where, bind=bind)
            n = _export_type(writer, datastore, bulk.iter_dataset_files(conn, selection), type_rec, keys, runs,
                             include_files=include_files, verify=verify)
            if not n:
                if type_rec.dataset_type.name in explicit:  # asked for by name: the importer registers it
                    writer.add_dataset_type(type_rec.dataset_type)
                    counts[type_rec.dataset_type.name] = 0
                continue
            counts[type_rec.dataset_type.name] = n
            tags = bulk.tag_memberships(conn, selection, searched)
            used.update(t[0] for t in tags)
            if tags:
                writer.write_table("tags", {"collection": [t[0] for t in tags], "dataset_id": [t[1] for t in tags]})
            ranges = bulk.calib_ranges(conn, selection, searched)
            used.update(r[0] for r in ranges)
            if ranges:
                writer.write_table("calibs", {"collection": [r[0] for r in ranges],
                                              "dataset_type": [type_rec.dataset_type.name] * len(ranges),
                                              "dataset_id": [r[1] for r in ranges],
                                              "begin_ns": [r[2] for r in ranges], "end_ns": [r[3] for r in ranges]})
            outputs = bulk.quantum_outputs(conn, selection)
            if outputs:
                writer.write_table("quantum_outputs", {"dataset_id": [o[0] for o in outputs],
                                                       "quantum_id": [o[1] for o in outputs]})
                quantum_ids.update(o[1] for o in outputs)
        n_quanta = _export_quanta(writer, registry, conn, quantum_ids)
        record_counts = _export_records(writer, registry, conn, keys)
        if refs is not None and not names:
            searched = [r for r in searched if r.name in used]
        exported = _export_collections(writer, registry, conn, names, searched, runs, chains=chains)
        writer.instruments = {name: info for name, info in registry.instruments.items()
                              if name in {k[0] for k in keys.get("instrument", ())}}
        manifest = writer.finish(counts=counts)
    totals = manifest["totals"]
    return ExportReport(path=writer.path, datasets=totals["datasets"], files=totals["files"], bytes=totals["bytes"],
                        dataset_types=counts, collections=exported, records=record_counts, quanta=n_quanta,
                        seconds=time.perf_counter() - start)


def dataset_types_to_export(registry: Registry, wanted: str | Iterable[str] | None) -> list[DatasetTypeRecord]:
    """The registered dataset types that ``wanted`` (names and globs; None: all) selects."""
    return _dataset_types(registry, wanted)[0]


def _dataset_types(registry: Registry, wanted: str | Iterable[str] | None
                   ) -> tuple[list[DatasetTypeRecord], set[str]]:
    """The types to export, and those named explicitly (not through a glob)."""
    if wanted is None:
        return sorted(registry.dataset_types.all(), key=lambda r: r.dataset_type.name), set()
    patterns = [wanted] if isinstance(wanted, str) else list(wanted)
    out: dict[str, DatasetTypeRecord] = {}
    explicit = set()
    for pattern in patterns:
        if any(c in pattern for c in _GLOB):
            for rec in registry.dataset_types.all():
                if fnmatch.fnmatchcase(rec.dataset_type.name, pattern):
                    out[rec.dataset_type.name] = rec
        else:
            rec = registry.dataset_types.get(pattern)  # an unknown name is an error naming the close ones
            out[rec.dataset_type.name] = rec
            explicit.add(rec.dataset_type.name)
    return [out[n] for n in sorted(out)], explicit


def _export_type(writer: BundleWriter, datastore: Datastore, batches: Iterable[list[list[Any]]],
                 type_rec: DatasetTypeRecord, keys: dict[str, set[tuple[Any, ...]]], runs: set[str], *,
                 include_files: bool, verify: bool) -> int:
    """Stream one type's rows into its table (copying the files); returns how many datasets."""
    name = type_rec.dataset_type.name
    group = type_rec.group
    universe = group.universe
    required = group.required
    n_dims = len(required)
    # Which data ID columns make the key of each required dimension's record.
    key_positions = {d: [required.index(x) for x in universe[d].required] for d in required}
    n = 0
    for columns in batches:
        writer.add_dataset_type(type_rec.dataset_type)
        ids, run_names = columns[0], columns[1]
        dims = columns[2:2 + n_dims]
        components, paths, formatters, classes, checksums, sizes = columns[2 + n_dims:]
        runs.update(run_names)
        for dim, positions in key_positions.items():
            keys.setdefault(dim, set()).update(zip(*[dims[i] for i in positions]))
        n += sum(1 for c in components if not c)  # the main file's row (or the row of a dataset without files)
        direct: list[str | None] = [None] * len(ids)
        bundle_paths = list(paths)
        for i, rel in enumerate(paths):
            if rel is None:
                continue
            if os.path.isabs(rel):  # ingested with transfer="direct": copied under direct/<id>/
                direct[i] = rel
                bundle_paths[i] = f"{DIRECT_DIR}/{ids[i]}/{components[i] + '/' if components[i] else ''}" \
                                  f"{os.path.basename(rel.rstrip('/'))}"
            if include_files:
                _copy(writer, datastore, name, ids[i], run_names[i], rel, bundle_paths[i], checksums[i], sizes[i],
                      verify)
        writer.write_datasets(name, {
            "dataset_id": ids, "run": run_names, **{d: dims[i] for i, d in enumerate(required)},
            "component": components, "path": bundle_paths, "formatter": formatters, "storage_class": classes,
            "checksum": checksums, "file_size": sizes, "direct_path": direct})
    return n


def _copy(writer: BundleWriter, datastore: Datastore, name: str, dataset_id: str, run: str, rel: str,
          bundle_path: str, checksum: str | None, size: int | None, verify: bool) -> None:
    source = datastore.abspath(rel)
    what = f"the file of {name} dataset {dataset_id} in run {run!r} ({source})"
    try:
        if verify and checksum:
            verify_path(source, checksum, size)
        if (checksum or "").startswith(MANIFEST_PREFIX) or os.path.isdir(source):
            writer.add_tree(source, bundle_path, dataset_type=name)
        else:
            writer.add_file(source, bundle_path, dataset_type=name)
    except FileNotFoundError:
        raise DatasetNotFoundError(f"{what} is missing; nothing was exported (`butler verify` lists every "
                                   "missing file; export with include_files=False to export the records only)"
                                   ) from None
    except ChecksumError as err:
        raise ChecksumError(f"{what} is damaged, nothing was exported: {err}") from None


def _export_quanta(writer: BundleWriter, registry: Registry, conn: Any, quantum_ids: set[str]) -> int:
    if not quantum_ids:
        return 0
    rows = list(registry.bulk_reads.quanta(conn, sorted(quantum_ids), registry.quantum_columns()))
    columns = ("quantum_id", "run", "task", "data_id", "config_digest", "host", "worker", "start_ns", "end_ns",
               "status", "error", "inputs")
    writer.write_table("quanta", {c: [r.get(c) for r in rows] for c in columns})
    return len(rows)


def _export_records(writer: BundleWriter, registry: Registry, conn: Any, keys: dict[str, set[tuple[Any, ...]]]
                    ) -> dict[str, int]:
    """The records of every dimension value the data IDs hold, and of everything those records
    require or imply, transitively; then the join elements' records between exported ones."""
    universe = registry.universe
    bulk = registry.bulk_reads
    exported: dict[str, set[tuple[Any, ...]]] = {}
    rows_by_element: dict[str, list[dict[str, Any]]] = {}
    pending = {d: set(v) for d, v in keys.items()}
    while pending:
        dim, wanted = pending.popitem()
        done = exported.setdefault(dim, set())
        new = wanted - done
        if not new:
            continue
        element = universe[dim]
        rows = bulk.records_for_keys(conn, element, new)
        done.update(new)
        rows_by_element.setdefault(dim, []).extend(rows)
        for other in (*element.required, *element.implies):
            if other == dim:
                continue
            target = universe[other]
            cols = list(target.required)
            found = {tuple(r[c] for c in cols) for r in rows if all(r.get(c) is not None for c in cols)}
            found -= exported.get(other, set())
            if found:
                pending.setdefault(other, set()).update(found)
    for element in universe.elements:
        if not element.is_dimension:
            rows = bulk.join_records(conn, element, exported)
            if rows:
                rows_by_element[element.name] = rows
    counts = {}
    for element in universe.elements:  # universe order: what a record requires comes first
        element_rows = rows_by_element.get(element.name)
        if element_rows:
            fields = element.field_types
            writer.write_records(element.name, {c: [r[c] for r in element_rows] for c in fields})
            counts[element.name] = len(element_rows)
    return counts


def _export_collections(writer: BundleWriter, registry: Registry, conn: Any, names: Sequence[str],
                        searched: Sequence[CollectionRecord], runs: set[str], *, chains: bool) -> list[str]:
    manager = registry.collections
    records: dict[str, CollectionRecord] = {}
    children: dict[str, list[str]] = {}
    chain_order: list[CollectionRecord] = []

    def add_chain(rec: CollectionRecord) -> None:
        if rec.name in children:
            return
        kids = children[rec.name] = manager.chain_children(rec.name)
        for kid in kids:
            child = manager.get(kid)
            if child.type == CollectionType.CHAINED:
                add_chain(child)
            else:
                records.setdefault(child.name, child)
        chain_order.append(rec)  # after its children (post-order): an importer creates them first

    if chains:
        for name in names:
            recs = manager.query(name) if any(c in name for c in _GLOB) else [manager.get(name)]
            for rec in recs:
                if rec.type == CollectionType.CHAINED:
                    add_chain(rec)
    for rec in searched:
        records.setdefault(rec.name, rec)
    for run in sorted(runs):
        if run not in records:
            records[run] = manager.get(run)
    out = []
    for rec in [*sorted(records.values(), key=lambda r: r.name), *chain_order]:
        writer.add_collection(BundleCollection(name=rec.name, type=rec.type.name, owner=rec.owner, doc=rec.doc,
                                               children=tuple(children.get(rec.name, ()))))
        out.append(rec.name)
    return out
