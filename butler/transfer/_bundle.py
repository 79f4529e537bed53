"""Read and validate a bundle before anything is imported from it.

`open_bundle` checks the container and the manifest, each problem with its own error naming
what is wrong (see ``_errors``): a truncated or damaged zip, no manifest, a newer major format
version, malformed or missing tables, a path that escapes (``..``, absolute, backslash, a zip
member that is a symlink, a symlink in a directory bundle pointing out of it), a dataset in a
run the manifest does not list as a RUN collection, a listed file that is absent. Opening reads the small ``bundle.json`` and each dataset table's path column
(vectorised by pyarrow), never the dataset files; `Bundle.verify_files` then streams every file
through the repository's checksum function and compares checksum and size with the record.
"""

from __future__ import annotations

import json
import os
import stat
import zipfile
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Self

from .._dataset_type import DatasetType
from ..datastore._directory_io import MANIFEST_NAME, MANIFEST_PREFIX, directory_problems, manifest_bytes
from ..datastore._file_io import CHECKSUM_ALGORITHM, checksum_bytes, checksum_stream, verify_file
from ..errors import ChecksumError
from ._errors import (
    BundleChecksumError,
    BundleCorruptError,
    BundleManifestError,
    BundleMissingFileError,
    BundleNotFoundError,
    BundlePathError,
    BundleUniverseError,
    BundleVersionError,
)
from ._format import (
    BUNDLE_JSON,
    DIRECT_DIR,
    FILE_COLUMNS,
    FORMAT_NAME,
    FORMAT_VERSION,
    TABLES,
    BundleCollection,
    BundleDatasetType,
    check_bundle_path,
    dataset_table,
    fixed_schema,
    path_problem,
    record_table,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from .._dataset_ref import DatasetRef
    from ..dimensions import DimensionUniverse

__all__ = ["Bundle", "open_bundle"]

_BATCH = 65_536
_SMALL = 1 << 20  # files up to this size are extracted from a zip in one read


def open_bundle(path: str | os.PathLike[str], *, files_root: str | os.PathLike[str] | None = None) -> Bundle:
    """Open and validate the bundle at ``path`` (a zip file or a directory); see `Bundle`.

    ``files_root``: read the dataset files from this directory (a repository's root: its files are
    at the repository-relative paths a bundle uses; "direct" files at their recorded absolute
    paths) instead of the bundle; its manifest may then have been written without files. This is
    how `Butler.transfer_from` imports straight from another repository."""
    return Bundle(path, files_root=files_root)


class _Container:
    """The files of a bundle, by bundle path: a zip's members or a directory's files."""

    def __init__(self, path: str, files_root: str | None = None):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.files_root = files_root
        self.aliases: dict[str, str] = {}
        """Bundle path -> absolute path of files read elsewhere ("direct" files of a repository)."""
        if os.path.isdir(path):
            self.root = os.path.realpath(path)
            self._check_symlinks()
            self.names: set[str] | None = None
        else:
            self.root = ""
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, OSError) as err:
                raise BundleCorruptError(
                    f"{path} is not a readable zip file (truncated, damaged, or not a bundle: {err}); "
                    "export the bundle again or copy it completely"
                ) from None
            self.names = set()
            for info in self.zip.infolist():
                name = info.filename.rstrip("/") if info.is_dir() else info.filename
                problem = path_problem(name)
                if problem is not None:
                    raise BundlePathError(
                        f"the zip member {info.filename!r} of {path} {problem}: a bundle's members are relative "
                        "paths without '..', so that none can land outside the repository; refusing the bundle"
                    )
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise BundlePathError(f"the zip member {info.filename!r} of {path} is a symbolic link; bundles "
                                          "hold regular files only (a link could point out of the repository)")
                if not info.is_dir():
                    self.names.add(name)
            self._dirs: set[str] | None = None

    def _check_symlinks(self) -> None:
        root = self.root
        for dirpath, dirnames, filenames in os.walk(root):
            for name in (*dirnames, *filenames):
                full = os.path.join(dirpath, name)
                if os.path.islink(full):
                    target = os.path.realpath(full)
                    if target != root and not target.startswith(root + os.sep):
                        rel = os.path.relpath(full, root)
                        raise BundlePathError(
                            f"{rel!r} in the bundle {self.path} is a symbolic link to {target}, outside the "
                            "bundle; a bundle must contain its files (replace the link by the file)"
                        )

    def full(self, name: str) -> str:
        """The local path of a bundle path (a directory bundle's file, or the repository's it reads from)."""
        if self.files_root is None or name.split("/", 1)[0] == "manifest":
            return os.path.join(self.root, name)
        if self.aliases and name.startswith(DIRECT_DIR + "/"):
            target = self.aliases.get(name)
            if target is not None:
                return target
            for key, target in self.aliases.items():  # a member of a "direct" directory dataset
                if name.startswith(key + "/"):
                    return os.path.join(target, name[len(key) + 1:])
        return os.path.join(self.files_root, name)

    def exists(self, name: str) -> bool:
        if self.names is None:
            return os.path.lexists(self.full(name))
        return name in self.names

    def is_dir(self, name: str) -> bool:
        if self.names is None:
            return os.path.isdir(self.full(name))
        if self._dirs is None:
            dirs = set()
            for n in self.names:
                parts = n.split("/")
                for i in range(1, len(parts)):
                    dirs.add("/".join(parts[:i]))
            self._dirs = dirs
        return name in self._dirs

    def members(self, prefix: str) -> list[str]:
        """Bundle paths of the files below the directory ``prefix``."""
        if self.names is None:
            base = self.full(prefix)
            out = []
            for dirpath, _, filenames in os.walk(base):
                for n in filenames:
                    rel = os.path.relpath(os.path.join(dirpath, n), base).replace(os.sep, "/")
                    out.append(f"{prefix}/{rel}")
            return sorted(out)
        return sorted(n for n in self.names if n.startswith(prefix + "/"))

    def open(self, name: str) -> IO[bytes]:
        if self.zip is None:
            return open(self.full(name), "rb")
        return self.zip.open(name)

    def size(self, name: str) -> int:
        if self.zip is None:
            return os.stat(self.full(name)).st_size
        return self.zip.getinfo(name).file_size

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


class Bundle:
    """An opened, validated bundle: its manifest, tables and files (read-only).

    Tables are pyarrow tables read on demand; `iter_datasets` streams one dataset type's rows in
    batches. Use it as a context manager (or call `close`) to release a zip file.
    """

    def __init__(self, path: str | os.PathLike[str], *, files_root: str | os.PathLike[str] | None = None):
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.exists(self.path):
            raise BundleNotFoundError(f"no bundle at {self.path} (no such file or directory)")
        root = None if files_root is None else os.path.abspath(os.fspath(files_root))
        if root is not None and not os.path.isdir(self.path):
            raise ValueError(f"files_root is for a directory bundle (a manifest); {self.path} is a file")
        self.files_where = f"the bundle {self.path}" if root is None else f"the repository {root}"
        """Where the dataset files are read from, as error messages name it."""
        self._files = _Container(self.path, root)
        try:
            self.manifest = self._read_manifest()
            self._check_manifest()
            self._check_paths()
        except BaseException:
            self._files.close()
            raise

    # -- validation -------------------------------------------------------------------------------
    def _read_manifest(self) -> dict[str, Any]:
        if not self._files.exists(BUNDLE_JSON):
            raise BundleManifestError(
                f"{self.path} has no {BUNDLE_JSON}: it is not a bundle, or its export was interrupted "
                "(bundle.json is written last)"
            )
        try:
            with self._files.open(BUNDLE_JSON) as stream:
                data = json.loads(stream.read())
        except (zipfile.BadZipFile, OSError) as err:
            raise BundleCorruptError(f"cannot read {BUNDLE_JSON} of {self.path}: {err}") from None
        except ValueError as err:
            raise BundleManifestError(f"{BUNDLE_JSON} of {self.path} is not valid JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise BundleManifestError(f"{BUNDLE_JSON} of {self.path} is not a {FORMAT_NAME} manifest "
                                      f"(its 'format' is {data.get('format') if isinstance(data, dict) else data!r})")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise BundleManifestError(f"{BUNDLE_JSON} of {self.path} has no integer format_version ({version!r})")
        if version > FORMAT_VERSION:
            raise BundleVersionError(
                f"{self.path} is a bundle of format version {version}.{data.get('format_minor', 0)}; this butler "
                f"reads format version {FORMAT_VERSION} and older: upgrade the butler to import it, or export it "
                "again with this version"
            )
        return data

    def _check_manifest(self) -> None:
        m = self.manifest
        where = f"{BUNDLE_JSON} of {self.path}"
        try:
            self.dataset_types_info = [BundleDatasetType.from_dict(t) for t in m["dataset_types"]]
            self.collections = [BundleCollection.from_dict(c) for c in m["collections"]]
            universe = m["universe"]
            self.universe_info: dict[str, Any] = {"namespace": str(universe["namespace"]),
                                                  "version": int(universe["version"]),
                                                  "digest": str(universe["digest"]),
                                                  "elements": dict(universe.get("elements", {}))}
            self.record_counts = {str(k): int(v["count"]) for k, v in m.get("records", {}).items()}
            self.table_counts = {str(k): int(v["count"]) for k, v in m.get("tables", {}).items()}
            self.instruments: dict[str, Any] = dict(m.get("instruments", {}))
            self.include_files = bool(m.get("include_files", True)) or self._files.files_root is not None
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise BundleManifestError(f"{where} is malformed: {type(err).__name__}: {err}") from None
        self.dataset_types = [DatasetType(t.name, t.dimensions, t.storage_class, is_calibration=t.is_calibration)
                              for t in self.dataset_types_info]
        for name in self.table_counts:
            if name not in TABLES:
                raise BundleManifestError(f"{where} lists an unknown table {name!r}; known: {sorted(TABLES)}")
        for t in self.dataset_types_info:
            self._check_table(dataset_table(t.name), ("dataset_id", "run", *FILE_COLUMNS))
        for element in self.record_counts:
            fields = self.universe_info["elements"].get(element, {}).get("fields")
            if fields is None:
                raise BundleManifestError(f"{where} has {element} records but no columns for {element!r} in "
                                          "its universe")
            self._check_table(record_table(element), tuple(fields))
        for name in self.table_counts:
            self._check_table(TABLES[name], tuple(fixed_schema(name).names))

    def _check_table(self, name: str, columns: Sequence[str]) -> None:
        if not self._files.exists(name):
            raise BundleManifestError(f"the table {name} that {BUNDLE_JSON} lists is missing from {self.path}")
        schema = self._schema(name)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise BundleManifestError(f"the table {name} of {self.path} lacks the column(s) {missing}")

    def _schema(self, name: str) -> pa.Schema:
        import pyarrow.parquet as pq

        try:
            with self._files.open(name) as stream:
                return pq.read_schema(stream)
        except Exception as err:  # noqa: BLE001 - pyarrow and zipfile raise many kinds
            raise BundleCorruptError(f"the table {name} of {self.path} is unreadable: {err}") from None

    def _check_paths(self) -> None:
        """Every file path is safe, and (when files are included) present; each table's path column
        is read in slices, so its strings are never all Python objects at once."""
        import pyarrow as pa
        import pyarrow.compute as pc

        runs = pa.array(sorted(c.name for c in self.collections if c.type == "RUN"), pa.string())
        aliases = self._files.aliases if self._files.files_root is not None else None
        for t in self.dataset_types_info:
            table = self._read(dataset_table(t.name), ["dataset_id", "run", "path", "direct_path"])
            # Every dataset's run is one of the bundle's RUN collections (checked, as those are, on
            # import): a run names the directory of the files ingested "direct" in the destination.
            unlisted = pc.unique(pc.filter(table.column("run"), pc.invert(pc.is_in(table.column("run"), runs))))
            if len(unlisted):
                raise BundleManifestError(
                    f"the {t.name} datasets of {self.path} are in the run(s) {unlisted.to_pylist()[:3]} that "
                    f"{BUNDLE_JSON} does not list as RUN collections (it lists {runs.to_pylist()}); export it again")
            table = table.select(["dataset_id", "path", "direct_path"])
            for batch in table.to_batches(max_chunksize=10_000):
                for dataset_id, path, direct in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(),
                                                    batch.column(2).to_pylist()):
                    if path is not None:
                        if aliases is not None and direct is not None:
                            aliases[path] = direct
                        self._check_path(t.name, dataset_id, path)

    def _check_path(self, dataset_type: str, dataset_id: str, path: str) -> None:
        what = f"the {dataset_type} dataset {dataset_id}"
        check_bundle_path(path, what)
        if path.split("/", 1)[0] == "manifest":
            raise BundlePathError(f"{what} has the path {path!r}, inside manifest/ (reserved)")
        if self._files.files_root is not None:  # a repository's files: `verify_files` reads each anyway
            return
        if self.include_files and not self._files.exists(path) and not self._files.is_dir(path):
            raise BundleMissingFileError(
                f"the file of {what} ({path}) is missing from {self.files_where}; export it again")

    def check_universe(self, universe: DimensionUniverse) -> None:
        """Raise `BundleUniverseError` unless the bundle's records and data IDs fit ``universe``: the
        same universe, or one where every element the bundle uses has the same keys and fields (and
        any extra field is nullable)."""
        info = self.universe_info
        if info["digest"] == universe.digest:
            return
        if info["namespace"] != universe.namespace:
            raise BundleUniverseError(
                f"the bundle {self.path} uses the dimension universe {info['namespace']!r} version "
                f"{info['version']}; the repository uses {universe.namespace!r} version {universe.version}")
        for name, spec in info["elements"].items():
            where = (f"the bundle {self.path} (universe version {info['version']}) and the repository (universe "
                     f"version {universe.version})")
            if name not in universe:
                raise BundleUniverseError(f"{where}: the repository's universe has no element {name!r}")
            element = universe[name]
            if list(element.primary_key_columns) != list(spec.get("keys", [])):
                raise BundleUniverseError(f"{where}: {name} is keyed by {spec.get('keys')} in the bundle, by "
                                          f"{list(element.primary_key_columns)} in the repository")
            theirs = dict(spec.get("fields", {}))
            ours = element.field_types
            for column, kind in theirs.items():
                if ours.get(column) != kind:
                    raise BundleUniverseError(f"{where}: {name}.{column} is {kind!r} in the bundle, "
                                              f"{ours.get(column, 'absent')!r} in the repository")
            nullable = {f.name for f in element.fields if f.nullable} | ({"region"} if element.spatial else set())
            for column in ours:
                if column not in theirs and column not in nullable:
                    raise BundleUniverseError(f"{where}: {name}.{column} is required in the repository and absent "
                                              "from the bundle's records")

    # -- tables -------------------------------------------------------------------------------------
    def _read(self, name: str, columns: Sequence[str] | None = None) -> pa.Table:
        import pyarrow.parquet as pq

        try:
            with self._files.open(name) as stream:
                table = pq.read_table(stream, columns=list(columns) if columns is not None else None)
        except Exception as err:  # noqa: BLE001
            raise BundleCorruptError(f"the table {name} of {self.path} is unreadable: {err}") from None
        _release_unused()
        return table

    def datasets(self, dataset_type: str) -> pa.Table:
        """The rows (one per file) of one dataset type: dataset_id, run, data ID values, file columns."""
        return self._read(dataset_table(self._type_info(dataset_type).name))

    def iter_datasets(self, dataset_type: str, batch_size: int = _BATCH) -> Iterator[pa.RecordBatch]:
        import pyarrow.parquet as pq

        name = dataset_table(self._type_info(dataset_type).name)
        try:
            with self._files.open(name) as stream:
                yield from pq.ParquetFile(stream).iter_batches(batch_size=batch_size)
        except (zipfile.BadZipFile, OSError, ValueError) as err:
            raise BundleCorruptError(f"the table {name} of {self.path} is unreadable: {err}") from None

    def _type_info(self, name: str) -> BundleDatasetType:
        for t in self.dataset_types_info:
            if t.name == name:
                return t
        raise LookupError(f"the bundle {self.path} has no dataset type {name!r}; it has "
                          f"{[t.name for t in self.dataset_types_info]}")

    def refs(self, dataset_type: str, universe: DimensionUniverse) -> list[DatasetRef]:
        """The datasets of one type as refs (ids, runs and data IDs as exported)."""
        import uuid

        from .._dataset_ref import DatasetRef
        from ..dimensions import DataCoordinate

        dt = next(t for t in self.dataset_types if t.name == self._type_info(dataset_type).name)
        group = dt.group(universe)
        table = self.datasets(dataset_type)
        columns = [table.column(c).to_pylist() for c in ("dataset_id", "run", *group.required)]
        out: dict[str, DatasetRef] = {}
        for row in zip(*columns):
            if row[0] not in out:
                out[row[0]] = DatasetRef(dt, DataCoordinate.from_values(group, tuple(row[2:])), row[1],
                                         uuid.UUID(row[0]))
        return list(out.values())

    def records(self, element: str) -> pa.Table:
        """The exported records of one element (registry column values: times in ns, encoded regions)."""
        if element not in self.record_counts:
            import pyarrow as pa

            fields = self.universe_info["elements"].get(element, {}).get("fields", {})
            from ._format import arrow_type

            return pa.schema([pa.field(k, arrow_type(v)) for k, v in fields.items()]).empty_table()
        return self._read(record_table(element))

    def table(self, name: str) -> pa.Table:
        """One of the fixed tables: "tags", "calibs", "quanta", "quantum_outputs" (empty if absent)."""
        if name not in TABLES:
            raise LookupError(f"no table {name!r} in a bundle; tables: {sorted(TABLES)}")
        if name not in self.table_counts:
            return fixed_schema(name).empty_table()
        return self._read(TABLES[name])

    @property
    def elements(self) -> list[str]:
        return list(self.record_counts)

    # -- files ---------------------------------------------------------------------------------------
    def open_file(self, path: str) -> IO[bytes]:
        """A binary stream of one dataset file of the bundle."""
        check_bundle_path(path, "the requested file")
        return self._files.open(path)

    @property
    def is_zip(self) -> bool:
        return self._files.zip is not None

    def member_paths(self, path: str) -> list[str]:
        """The bundle paths of the files of a directory dataset (a zarr store) at ``path``."""
        check_bundle_path(path, "the requested directory")
        return self._files.members(path)

    def local_path(self, path: str) -> str:
        """Where a file of a directory bundle is on disk (a zip's members have no such path)."""
        check_bundle_path(path, "the requested file")
        if self._files.zip is not None:
            raise ValueError(f"{self.path} is a zip file: read its members with open_file")
        return self._files.full(path)

    def iter_files(self) -> Iterator[tuple[str, str, str, str | None, int | None]]:
        """(dataset type, dataset id, path, checksum, size) of every file, streamed."""
        for t in self.dataset_types_info:
            for batch in self.iter_datasets(t.name):
                cols = [batch.column(c).to_pylist() for c in ("dataset_id", "path", "checksum", "file_size")]
                for dataset_id, path, checksum, size in zip(*cols):
                    if path is not None:
                        yield t.name, dataset_id, path, checksum, size

    def verify_files(self) -> int:
        """Check every file's size and checksum against the manifest; returns how many were checked.

        Raises `BundleChecksumError` (naming the dataset, the file, the recorded and found values) at
        the first damaged file, `BundleMissingFileError` for a missing one.
        """
        if not self.include_files:
            return 0
        n = 0
        for dataset_type, dataset_id, path, checksum, size in self.iter_files():
            what = f"the {dataset_type} dataset {dataset_id}"
            try:
                if checksum is not None and checksum.startswith(MANIFEST_PREFIX):
                    self._verify_directory(what, path, checksum, size)
                else:
                    self._verify_file(what, path, checksum, size)
            except FileNotFoundError:
                raise BundleMissingFileError(f"the file of {what} ({path}) is missing from {self.files_where}") from None
            n += 1
        return n

    def extract_verified(self, dataset_type: str, dataset_id: str, path: str, checksum: str | None,
                         size: int | None, directory: str) -> dict[str, str]:
        """Copy one dataset's file (or a directory dataset's members) out of the bundle into
        ``directory``, checking the bytes against the record as they are copied (one read);
        returns {bundle path: extracted path}, the paths being ``<dataset id>-<member index>`` (members
        sorted). `BundleChecksumError` as `verify_files`."""
        what = f"the {dataset_type} dataset {dataset_id}"
        try:
            if checksum is not None and checksum.startswith(MANIFEST_PREFIX):
                self._verify_directory(what, path, checksum, size)
                members: dict[str, tuple[str | None, int | None] | None] = dict.fromkeys(self._files.members(path))
            else:
                members = {path: (checksum, size)}
            out = {}
            for i, (member, expected) in enumerate(members.items()):
                target = os.path.join(directory, f"{dataset_id}-{i}")
                algorithm = (expected[0] or CHECKSUM_ALGORITHM).partition(":")[0] if expected else CHECKSUM_ALGORITHM
                if self._files.zip is not None and self._files.size(member) <= _SMALL:  # one read, one write
                    data = self._files.zip.read(member)
                    with open(target, "wb", buffering=0) as dst:
                        dst.write(data)
                    found_size, found = len(data), checksum_bytes(data, algorithm)
                else:
                    with self._files.open(member) as src, open(target, "wb") as dst:
                        found_size, found = checksum_stream(_Tee(src, dst), algorithm)
                out[member] = target
                if expected is not None:
                    if expected[1] is not None and found_size != expected[1]:
                        raise BundleChecksumError(f"{what} is damaged in {self.files_where}: size mismatch for "
                                                  f"{member}: recorded {expected[1]} bytes, found {found_size}")
                    if expected[0] is not None and found != expected[0]:
                        raise BundleChecksumError(f"{what} is damaged in {self.files_where}: checksum mismatch "
                                                  f"for {member}: recorded {expected[0]}, found {found}")
            return out
        except FileNotFoundError:
            raise BundleMissingFileError(f"the file of {what} ({path}) is missing from {self.files_where}") from None
        except (zipfile.BadZipFile, KeyError) as err:
            raise BundleChecksumError(f"{what} is damaged in {self.files_where}: {path}: {err}") from None

    def _verify_file(self, what: str, path: str, checksum: str | None, size: int | None) -> None:
        files = self._files
        if files.zip is None:
            if checksum is None:
                if not os.path.isfile(files.full(path)):
                    raise FileNotFoundError(path)
                return
            try:
                verify_file(files.full(path), checksum, size)
            except ChecksumError as err:
                raise BundleChecksumError(f"{what} is damaged in {self.files_where}: {err}") from None
            return
        if path not in files.names:  # type: ignore[operator]
            raise FileNotFoundError(path)
        found_size = files.size(path)
        if size is not None and found_size != size:
            raise BundleChecksumError(f"{what} is damaged in {self.files_where}: size mismatch for {path}: "
                                      f"recorded {size} bytes, found {found_size}")
        if checksum is None:
            return
        try:
            with files.open(path) as stream:
                _, found = checksum_stream(stream, checksum.partition(":")[0])
        except zipfile.BadZipFile as err:
            raise BundleChecksumError(f"{what} is damaged in {self.files_where}: {path}: {err}") from None
        if found != checksum:
            raise BundleChecksumError(f"{what} is damaged in {self.files_where}: checksum mismatch for {path}: "
                                      f"recorded {checksum}, found {found}")

    def _verify_directory(self, what: str, path: str, checksum: str, size: int | None) -> None:
        """A directory dataset (zarr store): its manifest file against the record, then every member."""
        files = self._files
        if files.zip is None:
            problems = directory_problems(files.full(path), checksum, size)
            if problems:
                raise BundleChecksumError(f"{what} is damaged in {self.files_where}: "
                                          + "; ".join(p[2] for p in problems))
            return
        manifest_name = f"{path}/{MANIFEST_NAME}"
        if manifest_name not in files.names:  # type: ignore[operator]
            if not files.is_dir(path):
                raise FileNotFoundError(path)
            raise BundleChecksumError(f"{what} is damaged in {self.files_where}: {manifest_name} is missing")
        with files.open(manifest_name) as stream:
            data = stream.read()
        inner = checksum.removeprefix(MANIFEST_PREFIX)
        found = checksum_bytes(data, inner.partition(":")[0])
        if found != inner:
            raise BundleChecksumError(f"{what} is damaged in {self.files_where}: checksum mismatch for "
                                      f"{manifest_name}: recorded {inner}, found {found}")
        entries = _parse_manifest(data)
        if entries is None or manifest_bytes(entries) != data:
            raise BundleChecksumError(f"{what}: {manifest_name} in {self.files_where} is not a store manifest")
        listed = {f"{path}/{member}" for member in entries}
        extra = sorted(set(files.members(path)) - listed - {manifest_name})
        if extra:
            raise BundleChecksumError(f"{what} is damaged in {self.files_where}: {extra[0]} is not in the "
                                      "store's manifest")
        for member, (member_size, member_checksum) in entries.items():
            self._verify_file(what, f"{path}/{member}", member_checksum, member_size)

    # -- life cycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        totals = self.manifest.get("totals", {})
        return (f"Bundle({self.path!r}, format {self.manifest['format_version']}, "
                f"{totals.get('datasets', '?')} datasets, {totals.get('files', '?')} files)")


def _release_unused() -> None:
    """Give the memory that reading a table freed back to the system: pyarrow's allocator
    (mimalloc) would otherwise keep the decompression buffers, tens of MB for 100k datasets."""
    import pyarrow as pa

    release = getattr(pa.default_memory_pool(), "release_unused", None)
    if release is not None:
        release()


class _Tee:
    """A binary stream that writes what is read from it to another (copy and checksum in one pass)."""

    def __init__(self, source: IO[bytes], target: IO[bytes]):
        self._source = source
        self._target = target

    def read(self, n: int = -1) -> bytes:
        block = self._source.read(n)
        self._target.write(block)
        return block


def _parse_manifest(data: bytes) -> dict[str, tuple[int, str]] | None:
    """The entries of a store's manifest file (header line, then path, size, checksum lines)."""
    try:
        lines = data.decode().splitlines()
        entries = {}
        for line in lines[1:]:
            member, size, checksum = line.split("\t")
            if path_problem(member) is not None:
                return None
            entries[member] = (int(size), checksum)
        return entries
    except ValueError:
        return None
