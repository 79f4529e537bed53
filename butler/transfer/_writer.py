"""Write a bundle: streamed parquet tables, dataset files, and ``bundle.json`` last.

Everything goes to a temporary name beside the target (``.tmp-<random>-<name>``) that is renamed
into place by `BundleWriter.finish`, so an interrupted export never leaves something that looks
like a bundle. A zip can have one member open for writing at a time, so the manifest tables of a
zip bundle are staged in a temporary directory and added at the end (they are small next to the
files); dataset files are added to the zip as they come, without compression (ZIP_STORED:
they are compressed already or small) and with zip64 when needed.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ..errors import ConflictError
from ._format import (
    BUNDLE_JSON,
    FORMAT_MINOR,
    FORMAT_NAME,
    FORMAT_VERSION,
    TABLES,
    BundleCollection,
    BundleDatasetType,
    check_bundle_path,
    dataset_schema,
    dataset_table,
    fixed_schema,
    record_schema,
    record_table,
)

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .._dataset_type import DatasetType
    from ..dimensions import DimensionUniverse

__all__ = ["BundleWriter", "is_zip_path"]


def is_zip_path(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path).lower().endswith(".zip")


class _Table:
    """One parquet table written in batches (opened on the first batch)."""

    def __init__(self, path: str, schema: pa.Schema):
        self.path = path
        self.schema = schema
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None

    def write(self, columns: Mapping[str, Sequence[Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        arrays = [pa.array(columns.get(f.name, [None] * _length(columns)), type=f.type) for f in self.schema]
        batch = pa.record_batch(arrays, schema=self.schema)
        if not batch.num_rows:
            return
        if self._writer is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def close(self) -> bool:
        """Close; whether the table has rows (an empty table is not written at all)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self.rows > 0


def _length(columns: Mapping[str, Sequence[Any]]) -> int:
    return len(next(iter(columns.values()))) if columns else 0


class BundleWriter:
    """Builds one bundle at ``path`` (a ``.zip`` file, else a directory) that must not exist yet."""

    def __init__(self, path: str | os.PathLike[str], *, universe: DimensionUniverse, include_files: bool = True,
                 source: str = ""):
        self.path = os.path.abspath(os.fspath(path))
        if os.path.lexists(self.path):
            raise ConflictError(f"{self.path} already exists; export to a new path (nothing was written)")
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"the directory {parent} of the bundle {self.path} does not exist")
        self.universe = universe
        self.include_files = include_files
        self.source = source
        self.is_zip = is_zip_path(self.path)
        token = os.urandom(4).hex()
        self._tmp = os.path.join(parent, f".tmp-{token}-{os.path.basename(self.path)}")
        self._zip: zipfile.ZipFile | None = None
        if self.is_zip:
            self._stage = self._tmp + ".manifest"
            os.makedirs(self._stage)
            self._zip = zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_STORED, allowZip64=True)
        else:
            os.makedirs(self._tmp)
            self._stage = self._tmp
        self._dirs: set[str] = set()
        self._names: set[str] = set()
        self._types: dict[str, tuple[DatasetType, _Table]] = {}
        self._type_files: dict[str, list[int]] = {}
        self._records: dict[str, _Table] = {}
        self._tables: dict[str, _Table] = {}
        self.collections: dict[str, BundleCollection] = {}
        self.instruments: dict[str, Any] = {}
        self.files = 0
        self.bytes = 0
        self._done = False

    # -- manifest -------------------------------------------------------------------------------
    def add_dataset_type(self, dataset_type: DatasetType) -> None:
        if dataset_type.name not in self._types:
            group = dataset_type.group(self.universe)
            table = _Table(os.path.join(self._stage, dataset_table(dataset_type.name)), dataset_schema(group))
            self._types[dataset_type.name] = (dataset_type, table)
            self._type_files[dataset_type.name] = [0, 0]

    def write_datasets(self, name: str, columns: Mapping[str, Sequence[Any]]) -> None:
        """Rows of the dataset table of type ``name`` (one per file), as columns (see `dataset_schema`)."""
        self._types[name][1].write(columns)

    def add_collection(self, collection: BundleCollection) -> None:
        self.collections[collection.name] = collection

    def write_records(self, element: str, columns: Mapping[str, Sequence[Any]]) -> None:
        table = self._records.get(element)
        if table is None:
            table = self._records[element] = _Table(os.path.join(self._stage, record_table(element)),
                                                    record_schema(self.universe[element]))
        table.write(columns)

    def write_table(self, name: str, columns: Mapping[str, Sequence[Any]]) -> None:
        """Rows of one of the fixed tables: "tags", "calibs", "quanta", "quantum_outputs"."""
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = _Table(os.path.join(self._stage, TABLES[name]), fixed_schema(name))
        table.write(columns)

    # -- files ----------------------------------------------------------------------------------
    def add_file(self, source: str, bundle_path: str, *, dataset_type: str | None = None) -> int:
        """Copy one file into the bundle at ``bundle_path``; returns its size."""
        check_bundle_path(bundle_path, "a dataset file")
        if bundle_path.startswith("manifest/") or bundle_path in self._names:
            raise ConflictError(f"the bundle path {bundle_path!r} is used twice (or is inside manifest/)")
        self._names.add(bundle_path)
        if self._zip is not None:
            self._zip.write(source, bundle_path)
            size = self._zip.getinfo(bundle_path).file_size
        else:
            target = os.path.join(self._tmp, bundle_path)
            directory = os.path.dirname(target)
            if directory not in self._dirs:
                os.makedirs(directory, exist_ok=True)
                self._dirs.add(directory)
            shutil.copyfile(source, target)
            size = os.stat(target).st_size
        self.files += 1
        self.bytes += size
        if dataset_type is not None:
            counts = self._type_files[dataset_type]
            counts[0] += 1
            counts[1] += size
        return size

    def add_tree(self, source: str, bundle_path: str, *, dataset_type: str | None = None) -> int:
        """Copy a directory dataset (a zarr store) file by file; returns the total size."""
        total = 0
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames.sort()
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, source).replace(os.sep, "/")
                total += self.add_file(full, f"{bundle_path}/{rel}")
        if dataset_type is not None:
            counts = self._type_files[dataset_type]
            counts[0] += 1
            counts[1] += total
        return total

    # -- end ------------------------------------------------------------------------------------
    def finish(self, *, counts: Mapping[str, int] | None = None, extra: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
        """Close every table, write ``bundle.json`` and move the bundle into place; returns the manifest."""
        types = []
        for name, (dataset_type, table) in self._types.items():
            table.close()
            n_files, n_bytes = self._type_files[name]
            types.append(BundleDatasetType(
                name=name, dimensions=tuple(dataset_type.dimensions), storage_class=dataset_type.storage_class,
                is_calibration=dataset_type.is_calibration, datasets=(counts or {}).get(name, 0), files=n_files,
                bytes=n_bytes).to_dict())
            if table.rows == 0:  # no dataset of it: an empty table with its schema, so readers find one
                _write_empty(table)
        records = {}
        for element, table in self._records.items():
            if table.close():
                records[element] = {"table": record_table(element), "count": table.rows}
        tables = {}
        for name, table in self._tables.items():
            if table.close():
                tables[name] = {"table": TABLES[name], "count": table.rows}
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "format_minor": FORMAT_MINOR,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "source": self.source,
            "include_files": self.include_files,
            "universe": _universe_info(self.universe, records, [t for t, _ in self._types.values()]),
            "instruments": self.instruments,
            "dataset_types": types,
            "collections": [c.to_dict() for c in self.collections.values()],
            "records": records,
            "tables": tables,
            "totals": {"datasets": sum(t["datasets"] for t in types), "files": self.files, "bytes": self.bytes},
            **(extra or {}),
        }
        text = json.dumps(manifest, indent=1, sort_keys=False)
        if self._zip is not None:
            for dirpath, _, filenames in os.walk(self._stage):
                for name in sorted(filenames):
                    full = os.path.join(dirpath, name)
                    self._zip.write(full, os.path.relpath(full, self._stage).replace(os.sep, "/"))
            self._zip.writestr(BUNDLE_JSON, text)
            self._zip.close()
            self._zip = None
            shutil.rmtree(self._stage, ignore_errors=True)
        else:
            with open(os.path.join(self._tmp, BUNDLE_JSON), "w") as stream:
                stream.write(text)
        os.rename(self._tmp, self.path)
        self._done = True
        return manifest

    def abort(self) -> None:
        """Remove everything written so far."""
        for table in [*(t for _, t in self._types.values()), *self._records.values(), *self._tables.values()]:
            try:
                table.close()
            except Exception:  # noqa: BLE001,S110 - the staged files are removed below anyway
                pass
        if self._zip is not None:
            try:
                self._zip.close()
            except Exception:  # noqa: BLE001,S110
                pass
            self._zip = None
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        shutil.rmtree(self._stage, ignore_errors=True)
        if os.path.isdir(self._tmp):
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self._done:
            self.abort()


def _write_empty(table: _Table) -> None:
    import pyarrow.parquet as pq

    os.makedirs(os.path.dirname(table.path), exist_ok=True)
    pq.write_table(table.schema.empty_table(), table.path)


def _universe_info(universe: DimensionUniverse, records: Iterable[str], types: Iterable[DatasetType]
                   ) -> dict[str, Any]:
    """What an importer checks against its own universe: the identity, and the columns of every
    element the bundle has records of or whose keys its data IDs hold."""
    names = set(records)
    for dataset_type in types:
        names.update(dataset_type.group(universe).required)
    elements = {}
    for element in universe.elements:
        if element.name in names:
            elements[element.name] = {"keys": list(element.primary_key_columns), "fields": element.field_types}
    return {"namespace": universe.namespace, "version": universe.version, "digest": universe.digest,
            "elements": elements}
