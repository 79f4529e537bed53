"""A local repository that reads its inputs from an upstream one (`Butler(local, upstream=...)`).

The upstream (a remote repository, ``http(s)://`` or ``ssh://``, or another repository directory) is
read-only; the local repository is a verified cache of it and takes every write. A dataset looked for
is found along the search path (see below); one found upstream is brought here first, through the import
of a bundle the upstream exports for it (`Butler.export(refs=...)`): every file is checked against
its upstream checksum before anything is registered, the dataset keeps its id, run, dimension records
and provenance, and nothing is half-cached. Later reads are local, and work with the upstream gone.

A search path is cut into segments (`segments`): this repository's own collections are searched
here, the others (unknown here, globs, or the runs held here only as cached copies, recorded in
the registry attribute `CACHED_RUNS`) upstream, in the path's order: a cache holds a subset of a
run, so asking it would answer with the subset. Dimension records and data IDs are the union of
both sides (the upstream's first).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._dataset_ref import DatasetRef
from ._dataset_type import DatasetType, split_component
from .errors import (
    ChecksumError,
    CollectionError,
    DataIdError,
    DatasetNotFoundError,
    DatasetTypeError,
    RemoteUnavailableError,
)

if TYPE_CHECKING:
    from ._butler import Butler
    from ._typing import CollectionsLike, DataIdLike, RefOrTypeLike
    from .dimensions import DataCoordinate
    from .registry._datasets import FoundDataset
    from .transfer import ImportReport

__all__ = ["CACHED_RUNS", "UpstreamUnreachableWarning", "cache_report", "cached_runs", "fetch", "find", "find_datasets", "prune_cache", "query_datasets",
           "segments", "union"]

class UpstreamUnreachableWarning(UserWarning):
    """A read answered from the cache because the upstream could not be reached."""


CACHED_RUNS = "upstream_cached_runs"
"""Registry attribute: JSON list of the runs (and the TAGGED and CALIBRATION collections that came with
their datasets) this repository holds as partial copies of an upstream's."""

_ATTEMPTS = 2
"""Fetches of one bundle before damage in transit is reported (the second is a retry)."""

_NOT_HERE = (CollectionError, DatasetTypeError, DataIdError, DatasetNotFoundError)
"""What a local lookup raises when the dataset is the upstream's (its collection, type or records unknown here)."""


_PARSED: dict[str, frozenset[str]] = {}


def cached_runs(butler: Butler) -> frozenset[str]:
    """The runs of ``butler``'s repository that are copies of its upstream's (brought by `fetch`)."""
    text = butler.registry.attributes.get(CACHED_RUNS)
    if not text:
        return frozenset()
    parsed = _PARSED.get(text)
    if parsed is None:
        if len(_PARSED) > 64:
            _PARSED.clear()
        parsed = _PARSED[text] = frozenset(json.loads(text))
    return parsed


def _mark_cached(butler: Butler, runs: set[str]) -> set[str]:
    """Record ``runs`` as cached copies, before their datasets are brought (so that a crash in between
    never leaves a cached run taken for one of this repository's own); the list is read again just
    before it is written, which keeps the window for a concurrent fetch's entries short. Returns the
    runs that were not listed yet."""
    registry = butler.registry
    registry.refresh_attributes()
    known = cached_runs(butler)
    if not runs <= known:
        registry.set_attribute(CACHED_RUNS, json.dumps(sorted(known | runs)))
    return runs - known


def _unmark(butler: Butler, runs: set[str]) -> None:
    """Forget ``runs`` as cached copies when a fetch brought none of them (they are not here)."""
    registry = butler.registry
    gone = {r for r in runs if not registry.query_collections([r])}
    if gone:
        registry.refresh_attributes()
        remaining = cached_runs(butler) - gone
        if remaining:
            registry.set_attribute(CACHED_RUNS, json.dumps(sorted(remaining)))
        else:
            registry.delete_attribute(CACHED_RUNS)


def fetch(butler: Butler, refs: Sequence[DatasetRef], importer: Callable[[str], ImportReport]) -> ImportReport:
    """Bring ``refs`` of ``butler``'s upstream into its repository with ``importer`` (an import of a
    bundle path into it: verified, ids kept, idempotent), their runs recorded as cached first."""
    from .transfer._errors import BundleChecksumError, BundleCorruptError

    upstream = butler.upstream
    assert upstream is not None
    added = _mark_cached(butler, {ref.run for ref in refs})
    damaged: BaseException | None = None
    try:
        for _ in range(_ATTEMPTS):  # a bundle damaged in transit is refused by the import and fetched again
            scratch = tempfile.mkdtemp(prefix="butler-upstream-")
            try:
                bundle = os.path.join(scratch, "bundle.zip")
                upstream.export(bundle, refs=list(refs))
                report = importer(bundle)
                # TAGGED and CALIBRATION collections of the refs came too, holding only their part: cached
                _mark_cached(butler, set(report.collections))
                return report
            except (BundleChecksumError, BundleCorruptError, RemoteUnavailableError) as err:  # damaged, cut off
                damaged = err
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        _unmark(butler, added)
        raise
    _unmark(butler, added)
    if isinstance(damaged, RemoteUnavailableError):
        raise RemoteUnavailableError(f"{len(refs)} dataset(s) could not be fetched from the upstream {upstream.root} "
                                     f"({_ATTEMPTS} attempts: {damaged}); nothing was cached") from None
    raise ChecksumError(
        f"{len(refs)} dataset(s) fetched from the upstream {upstream.root} arrived damaged {_ATTEMPTS} times "
        f"({damaged}); nothing was cached. If it persists, run `butler verify` on the upstream") from None


def segments(butler: Butler, names: Sequence[str]) -> list[tuple[bool, list[str]]]:
    """A search path cut into consecutive runs of collections of one side: ``(True, names)`` for this
    repository's own collections (here, and not cached copies), ``(False, names)`` for the upstream's
    (unknown here, globs, or runs held here as cached copies: the upstream has all of them). Searching
    the segments in order is searching the path in order."""
    known = butler.registry.collections  # the cached records (the lookups that follow revalidate them)
    here = {n for n in names if not any(ch in n for ch in "*?[") and known.find(n) is not None}
    own = here - cached_runs(butler)
    out: list[tuple[bool, list[str]]] = []
    for name in names:
        local = name in own
        if out and out[-1][0] == local:
            out[-1][1].append(name)
        else:
            out.append((local, [name]))
    return out


def _is_calibration(butler: Butler, dataset_type: RefOrTypeLike) -> bool:
    if isinstance(dataset_type, DatasetRef):
        return False
    name = dataset_type.name if isinstance(dataset_type, DatasetType) else dataset_type
    return butler.get_dataset_type(split_component(name)[0]).is_calibration


def find(butler: Butler, dataset_type: RefOrTypeLike, data_id: DataIdLike, collections: CollectionsLike,
         kwargs: Mapping[str, Any], *, required: bool) -> FoundDataset | None:
    """`butler._reads.find` along the search path, each collection asked of its side (this
    repository's own collections here, the rest of the upstream, fetching what is found there)."""
    from . import _reads

    def here(search: CollectionsLike, strict: bool = False) -> FoundDataset | None:
        try:
            return _reads.find(butler, dataset_type, data_id, search, kwargs, required=strict)
        except _NOT_HERE:
            if strict:
                raise
            return None

    def there(search: CollectionsLike, strict: bool = False) -> FoundDataset | None:
        upstream = butler.upstream  # opened on first use: a read of what is here works with it out of reach
        assert upstream is not None
        found = _reads.find(upstream, dataset_type, data_id, search, kwargs, required=strict)
        if found is None:
            return None
        local = _reads.find(butler, found.ref, None, None, {}, required=False)  # cached already?
        if local is not None:
            return local
        butler.fetch_from_upstream([found.ref])
        return _reads.find(butler, found.ref, None, None, {}, required=True)

    def cached_first(names: list[str]) -> FoundDataset | None:
        """The dataset in the first collection of an upstream segment when that is a run cached here
        and holds it here: the upstream would find that same dataset first (a run holds one dataset
        per type and data ID), so a re-read of a cached dataset asks nothing of the upstream."""
        if names[0] not in cached_runs(butler):
            return None
        return here([names[0]])

    try:
        if isinstance(dataset_type, DatasetRef):
            return here(None) or there(None, required)
        if _is_calibration(butler, dataset_type):  # by validity time: the upstream's calibration collections
            names = None if collections is None else butler.search_path(collections)
            if names is not None and all(local for local, _ in segments(butler, names)):
                return here(names, required)
            return there(collections, required)
        parts = segments(butler, butler.search_path(collections))
        for local, names in parts:
            found = here(names) if local else (cached_first(names) or there(names))
            if found is not None:
                return found
        if required:  # the side that explains it: the upstream's if it was searched
            upstream_names = [n for local, names in parts if not local for n in names]
            local_names = [n for local, names in parts if local for n in names]
            return there(upstream_names, True) if upstream_names else here(local_names, True)
        return None
    except RemoteUnavailableError:  # the upstream is out of reach: what was cached here is still readable
        if isinstance(dataset_type, DatasetRef) or (collections is None and not butler.collections):
            raise
        known = [n for local, names in segments(butler, butler.search_path(collections)) for n in names
                 if local or n in cached_runs(butler)]
        cached = here(known) if known else None
        if cached is None:
            raise
        warnings.warn(f"the upstream {butler.upstream_location} is unreachable: {cached.ref} was read from this "
                      "repository's cache (the upstream may hold a newer dataset earlier in the search path)",
                      UpstreamUnreachableWarning, stacklevel=4)
        return cached


def _side(butler: Butler, local: bool) -> Butler:
    upstream = butler.upstream
    assert upstream is not None
    return butler if local else upstream


def query_datasets(butler: Butler, dataset_type: Any, collections: Sequence[str], find_first: bool | None,
                   query: Callable[[Butler, Any, list[str], bool | None], list[DatasetRef]]) -> list[DatasetRef]:
    """``query(side, dataset_type, names, find_first)`` over each segment of the search path
    (`segments`), the first found per data ID kept when finding first."""
    parts = segments(butler, collections)
    if len(parts) == 1:
        return query(_side(butler, parts[0][0]), dataset_type, parts[0][1], find_first)
    first = find_first if find_first is not None else not any(ch in n for n in collections for ch in "*?[")
    seen: set[Any] = set()
    out: list[DatasetRef] = []
    for local, names in parts:
        try:
            refs = query(_side(butler, local), dataset_type, names, find_first)
        except DatasetTypeError:  # a type of one side only (an output type here, an input type upstream)
            continue
        for ref in refs:
            if first and ref.data_id in seen:
                continue
            seen.add(ref.data_id)
            out.append(ref)
    return out


def find_datasets(butler: Butler, dataset_type: str, data_ids: Sequence[DataCoordinate], collections: Sequence[str]
                  ) -> dict[DataCoordinate, DatasetRef]:
    """`Butler.find_datasets` along the segments of the search path: what one segment does not have
    is looked for in the next."""
    out: dict[DataCoordinate, DatasetRef] = {}
    left = list(data_ids)
    for local, names in segments(butler, collections):
        if not left:
            break
        side = _side(butler, local)
        try:
            found = side.reader.find_datasets(dataset_type, left, names) if local else \
                side.find_datasets(dataset_type, left, collections=names)
        except DatasetTypeError:
            continue
        out.update(found)
        left = [d for d in left if d not in found]
    return out


def union(first: Sequence[Any], second: Sequence[Any], key: Callable[[Any], Any]) -> list[Any]:
    """``first``, then what ``second`` has that ``first`` has not (by ``key``)."""
    seen = {key(x) for x in first}
    return [*first, *(x for x in second if key(x) not in seen)]


def cache_report(butler: Butler) -> list[dict[str, Any]]:
    """Per cached run: its datasets and the bytes of their files (``butler cache REPO list``)."""
    registry = butler.registry
    names = sorted(cached_runs(butler))
    present = {r.name: r for r in registry.query_collections(names)} if names else {}
    counts = registry.datasets.count_by_run([r.id for r in present.values()])
    rows = []
    for name in names:
        record = present.get(name)
        size = sum(s or 0 for _, _, s in registry.datasets.file_checks([record.id])) if record else 0
        rows.append({"run": name, "datasets": counts.get(record.id, 0) if record else 0, "bytes": size})
    return rows


def prune_cache(butler: Butler, *, older_than_ns: int | None = None) -> tuple[int, list[str]]:
    """Remove cached copies of upstream datasets (all, or those fetched more than ``older_than_ns``
    ago), and the cached runs left empty; returns (datasets removed, runs removed). Never touches
    runs this repository did not cache (your outputs)."""
    import time

    from ._butler import Butler as _Butler

    here = _Butler(butler.root, writeable=True)  # without the upstream: queries of the cached runs are local
    registry = here.registry
    cutoff = None if older_than_ns is None else time.time_ns() - older_than_ns
    runs = cached_runs(here)
    types = [t.name for t in here.query_dataset_types()]
    removed, emptied = 0, []
    for run in sorted(runs):
        if not registry.query_collections([run]):
            emptied.append(run)
            continue
        refs = [ref for name in types for ref in here.query_datasets(name, collections=run)]
        times = registry.datasets.ingest_times([r.id for r in refs])
        old = [r for r in refs if cutoff is None or times.get(r.id, 0) < cutoff]
        if old:
            removed += here.remove(old)
        if len(old) == len(refs):
            here.remove_runs(run)
            emptied.append(run)
    if emptied:
        registry.set_attribute(CACHED_RUNS, json.dumps(sorted(runs - set(emptied))))
    return removed, emptied
