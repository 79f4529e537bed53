"""A local repository that reads its inputs from an upstream one (`Butler(local, upstream=...)`).

The upstream (a remote repository, ``http(s)://`` or ``ssh://``, or another repository directory) is
read-only; the local repository is a verified cache of it and takes every write. A dataset looked for
is found locally first, then upstream; one found upstream is brought here first, through the import
of a bundle the upstream exports for it (`Butler.export(refs=...)`): every file is checked against
its upstream checksum before anything is registered, the dataset keeps its id, run, dimension records
and provenance, and nothing is half-cached. Later reads are local, and work with the upstream gone.

Queries of collections that only the upstream has (or that this repository holds only as cached
copies: the runs it brought here, recorded in the registry attribute `CACHED_RUNS`) are the
upstream's: a cache holds a subset, so asking it would answer with the subset.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._dataset_ref import DatasetRef
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
    from .registry._datasets import FoundDataset
    from .transfer import ImportReport

__all__ = ["CACHED_RUNS", "cache_report", "cached_runs", "fetch", "find", "prune_cache", "query_target", "uses_upstream"]

CACHED_RUNS = "upstream_cached_runs"
"""Registry attribute: JSON list of the runs this repository holds as copies of an upstream's."""

_ATTEMPTS = 2
"""Fetches of one bundle before damage in transit is reported (the second is a retry)."""

_NOT_HERE = (CollectionError, DatasetTypeError, DataIdError, DatasetNotFoundError)
"""What a local lookup raises when the dataset is the upstream's (its collection, type or records unknown here)."""


def cached_runs(butler: Butler) -> set[str]:
    """The runs of ``butler``'s repository that are copies of its upstream's (brought by `fetch`)."""
    text = butler.registry.attributes.get(CACHED_RUNS)
    return set(json.loads(text)) if text else set()


def fetch(butler: Butler, refs: Sequence[DatasetRef], importer: Callable[[str], ImportReport]) -> ImportReport:
    """Bring ``refs`` of ``butler``'s upstream into its repository with ``importer`` (an import of a
    bundle path into it: verified, ids kept, idempotent), and record their runs as cached."""
    from .transfer._errors import BundleChecksumError, BundleCorruptError

    upstream = butler.upstream
    assert upstream is not None
    damaged: BaseException | None = None
    for _ in range(_ATTEMPTS):  # a bundle damaged in transit is refused by the import and fetched again
        scratch = tempfile.mkdtemp(prefix="butler-upstream-")
        try:
            bundle = os.path.join(scratch, "bundle.zip")
            upstream.export(bundle, refs=list(refs))
            report = importer(bundle)
            break
        except (BundleChecksumError, BundleCorruptError, RemoteUnavailableError) as err:  # damaged or cut off
            damaged = err
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    else:
        if isinstance(damaged, RemoteUnavailableError):
            raise RemoteUnavailableError(f"{len(refs)} dataset(s) could not be fetched from the upstream {upstream.root} "
                                         f"({_ATTEMPTS} attempts: {damaged}); nothing was cached") from None
        raise ChecksumError(
            f"{len(refs)} dataset(s) fetched from the upstream {upstream.root} arrived damaged {_ATTEMPTS} times "
            f"({damaged}); nothing was cached. If it persists, run `butler verify` on the upstream") from None
    runs = cached_runs(butler)
    new = {ref.run for ref in refs} - runs
    if new:
        butler.registry.set_attribute(CACHED_RUNS, json.dumps(sorted(runs | new)))
    return report


def find(butler: Butler, dataset_type: RefOrTypeLike, data_id: DataIdLike, collections: CollectionsLike,
         kwargs: Mapping[str, Any], *, required: bool) -> FoundDataset | None:
    """`butler._reads.find`, local first, then upstream (fetching what is found there)."""
    from . import _reads

    try:
        found = _reads.find(butler, dataset_type, data_id, collections, kwargs, required=False)
    except _NOT_HERE:
        found = None
    if found is not None:
        return found
    upstream = butler.upstream
    assert upstream is not None
    there = _reads.find(upstream, dataset_type, data_id, butler.search_path(collections), kwargs, required=required)
    if there is None:
        return None
    butler.fetch_from_upstream([there.ref])
    ref = there.ref if there.ref.component is None else DatasetRef(there.ref.dataset_type, there.ref.data_id,
                                                                    there.ref.run, there.ref.id)
    return _reads.find(butler, ref, None, None, {}, required=True)


def uses_upstream(butler: Butler, collections: CollectionsLike) -> bool:
    """Whether a query of ``collections`` is the upstream's: some are unknown here, globs (the
    upstream's names), or runs this repository holds only cached copies of."""
    names = [collections] if isinstance(collections, str) else list(collections or ())
    if not names or any(ch in n for n in names for ch in "*?["):
        return True
    local = {r.name: r for r in butler.reader.query_collections(names)}
    if len(local) < len(set(names)):
        return True
    cached = cached_runs(butler)
    return any(name in cached for name in names)


def query_target(butler: Butler, collections: CollectionsLike | None) -> Butler:
    """The Butler a query is asked of: the upstream when it has the collections searched (see
    `uses_upstream`) or when none are (dimension records and data IDs: the upstream has them all),
    else ``butler`` itself."""
    upstream = butler.upstream
    if upstream is None:
        return butler
    if collections is None:
        return upstream
    return upstream if uses_upstream(butler, butler.search_path(collections)) else butler


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
