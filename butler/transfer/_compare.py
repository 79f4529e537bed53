"""Compare the content of two repositories: (dataset type, data ID, run, checksum of each file).

Dataset ids are not compared: two repositories built by the same pipeline from the same inputs
hold the same content under other ids, and compare identical. Per dataset type, each side is
one query returning the driver's tuples (data ID values, run, component, checksum); the sets of
dataset keys and the per-file checksums are then compared in Python. Values compare across
backends (a SQLite and a PostgreSQL repository) because both return plain ints and strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import CollectionError

if TYPE_CHECKING:
    from ..registry._collections import CollectionRecord
    from ..registry._registry import Registry

__all__ = ["ComparisonReport", "DatasetKey", "compare_registries"]


class DatasetKey(NamedTuple):
    """A dataset as content: its type, data ID (required values) and run."""

    dataset_type: str
    data_id: dict[str, Any]
    run: str

    def to_dict(self) -> dict[str, Any]:
        return {"dataset_type": self.dataset_type, "data_id": self.data_id, "run": self.run}


@dataclass(frozen=True, slots=True, kw_only=True)
class ComparisonReport:
    """The result of `Butler.compare`: ``identical`` when no dataset is only in one side or different."""

    a: str
    b: str
    only_in_a: list[DatasetKey] = field(default_factory=list)
    only_in_b: list[DatasetKey] = field(default_factory=list)
    different: list[DatasetKey] = field(default_factory=list)
    """Same type, data ID and run on both sides, with another checksum (or another set of files)."""
    same: int = 0
    datasets_a: int = 0
    datasets_b: int = 0

    @property
    def identical(self) -> bool:
        return not (self.only_in_a or self.only_in_b or self.different)

    @property
    def counts(self) -> dict[str, int]:
        return {"a": self.datasets_a, "b": self.datasets_b, "same": self.same, "only_in_a": len(self.only_in_a),
                "only_in_b": len(self.only_in_b), "different": len(self.different)}

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "identical": self.identical, "counts": self.counts,
                "only_in_a": [k.to_dict() for k in self.only_in_a],
                "only_in_b": [k.to_dict() for k in self.only_in_b],
                "different": [k.to_dict() for k in self.different]}

    def __str__(self) -> str:
        c = self.counts
        state = "identical" if self.identical else "different"
        return (f"{self.a} and {self.b} are {state}: {c['same']} datasets the same, {c['only_in_a']} only in a, "
                f"{c['only_in_b']} only in b, {c['different']} with other content")


def _content(registry: Registry, collections: Sequence[str] | None, dataset_types: Iterable[str] | None
             ) -> dict[str, tuple[tuple[str, ...], dict[tuple[Any, ...], Any]]]:
    """{type name: (required dimensions, {(*data ID values, run, component): checksum})}."""
    import fnmatch

    colls: list[CollectionRecord] | None = None
    out: dict[str, tuple[tuple[str, ...], dict[tuple[Any, ...], Any]]] = {}
    patterns = None if dataset_types is None else ([dataset_types] if isinstance(dataset_types, str)
                                                     else list(dataset_types))
    with registry.transaction() as conn:
        if collections is not None:  # a collection one side lacks holds nothing there
            colls = []
            for item in collections:
                try:
                    colls += registry.collections.resolve([item], conn)
                except CollectionError:
                    continue
        for type_rec in registry.dataset_types.all():
            name = type_rec.dataset_type.name
            if patterns is not None and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
                continue
            rows = registry.bulk_reads.content_rows(conn, type_rec, colls)
            out[name] = (type_rec.group.required, {r[:-1]: r[-1] for r in rows})
    return out


def compare_registries(a: Registry, b: Registry, *, names: tuple[str, str], collections: Sequence[str] | None = None,
                       dataset_types: Iterable[str] | None = None) -> ComparisonReport:
    """Compare the datasets of two registries by content; see `Butler.compare`."""
    types = list(dataset_types) if dataset_types is not None and not isinstance(dataset_types, str) else dataset_types
    if collections is not None and isinstance(collections, str):
        collections = [collections]
    content_a = _content(a, collections, types)
    content_b = _content(b, collections, types)
    only_a: list[DatasetKey] = []
    only_b: list[DatasetKey] = []
    different: list[DatasetKey] = []
    same = n_a = n_b = 0
    for name in sorted(set(content_a) | set(content_b)):
        dims_a, files_a = content_a.get(name, ((), {}))
        dims_b, files_b = content_b.get(name, ((), {}))
        if name in content_a and name in content_b and dims_a != dims_b:  # other definitions: nothing matches
            files_b = {("<other dimensions>", *k): v for k, v in files_b.items()}
        datasets_a = {k[:-1] for k in files_a}
        datasets_b = {k[:-1] for k in files_b}
        n_a += len(datasets_a)
        n_b += len(datasets_b)
        both = datasets_a & datasets_b
        changed = {k[:-1] for k, v in files_a.items() if k[:-1] in both and files_b.get(k, _MISSING) != v}
        changed.update(k[:-1] for k in files_b if k[:-1] in both and k not in files_a)
        same += len(both) - len(changed)
        only_a += _keys(name, dims_a, datasets_a - datasets_b)
        only_b += _keys(name, dims_b, datasets_b - datasets_a)
        different += _keys(name, dims_a, changed)
    return ComparisonReport(a=names[0], b=names[1], only_in_a=only_a, only_in_b=only_b, different=different,
                            same=same, datasets_a=n_a, datasets_b=n_b)


_MISSING = object()


def _keys(name: str, dims: tuple[str, ...], keys: Iterable[tuple[Any, ...]]) -> list[DatasetKey]:
    out = []
    for key in sorted(keys, key=repr):
        values, run = key[:-1], key[-1]
        if values and values[0] == "<other dimensions>":
            values = values[1:]
        out.append(DatasetKey(name, dict(zip(dims, values)), run))
    return out
