"""The file datastore: dataset files under the repository root, named by file templates.

Writes are two-phase so that a put is all-or-nothing: the object is serialised and staged to a
temporary file (checksum and size computed from the bytes in memory), the registry rows are
inserted, and only then is the file renamed into place, inside the registry transaction. Paths
are stored relative to the root, so a repository can be moved or copied as a directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._dataset_ref import DatasetRef
from ..errors import ChecksumError, DatasetNotFoundError
from ._directory_io import MANIFEST_PREFIX, StagedDirectory, directory_problems, remove_path, verify_path
from ._file_io import StagedFile, stage
from ._formatters import formatter_for
from ._storage_class import StorageClass, get_storage_class
from ._templates import TemplateSet
from ._verified_reads import load_verified

if TYPE_CHECKING:
    from .._dataset_type import DatasetType
    from ..dimensions import DataCoordinate, DimensionGroup
    from ..registry._datasets import FileRecord

__all__ = ["FileDatastore", "PlannedWrite", "PreparedWrite", "VerifyProblem"]


@dataclass(slots=True)
class PlannedWrite:
    """Where an object will be written, and how; nothing is on disk yet."""

    obj: Any
    path: str  # relative to the root
    formatter: Any
    storage_class: str
    component: str = ""


@dataclass(slots=True)
class PreparedWrite:
    """A staged file plus the record to insert for it."""

    staged: StagedFile | StagedDirectory
    path: str  # relative to the root
    formatter: str
    storage_class: str
    component: str = ""


@dataclass(frozen=True, slots=True)
class VerifyProblem:
    path: str
    problem: str  # "missing", "checksum", "size"; "leftover" (cleanup removes it), "unregistered"
    detail: str
    member: str = ""
    """The damaged file inside a directory dataset (zarr store), relative to it; "" for the whole file."""


class FileDatastore:
    """Reads and writes dataset files below ``root``.

    ``implied`` gives the implied values of a data ID (band, day_obs...) that file templates may
    use; the registry answers it (`DataIdResolver.expand_implied`), called only when a template
    names an implied value the data ID does not carry.
    """

    def __init__(self, root: str, templates: TemplateSet, formatter_overrides: Mapping[str, str] | None = None,
                 implied: Callable[[DataCoordinate], Mapping[str, Any]] | None = None):
        self.root = os.path.abspath(root)
        self.templates = templates
        self.formatter_overrides = dict(formatter_overrides or {})
        self._implied = implied

    # -- paths ----------------------------------------------------------------------------
    def template_values(self, ref: DatasetRef) -> dict[str, Any]:
        """The data ID values of ``ref`` with the implied ones its file template uses."""
        data_id = ref.data_id
        values = data_id.to_dict(implied=True)
        group = data_id.group
        if group.implied and self._implied is not None:
            template, _, _ = self.templates.lookup(ref.dataset_type.name, values.get("instrument"))
            if any(n in template.names and n not in values for n in group.implied):
                values.update(self._implied(data_id))
        return values

    def relative_path(self, ref: DatasetRef, values: Mapping[str, Any], extension: str,
                      component: str | None = None) -> str:
        instrument = values.get("instrument")
        template, _, _ = self.templates.lookup(ref.dataset_type.name, instrument)
        fields = dict(values)
        fields["run"] = ref.run
        fields["dataset_type"] = ref.dataset_type.name
        if "id" in template.names:
            fields["id"] = ref.id.hex
        if component:
            fields["component"] = component
        path = template.format(fields, ref.data_id.group.required)
        if component and "component" not in template.names:
            path = f"{path}.{component}"
        return path + extension

    def validate_dataset_type(self, dataset_type: DatasetType, group: DimensionGroup) -> None:
        """Check that every file template that could apply to ``dataset_type`` makes unique paths
        from its data IDs (`ValueError` naming the template and what it lacks)."""
        available = frozenset(group.names)
        for template, per_type, per_instrument in self.templates.all_for(dataset_type.name):
            template.validate(dataset_type=dataset_type.name, required=group.required, available=available,
                              per_type=per_type, per_instrument=per_instrument)

    def abspath(self, relative: str) -> str:
        return relative if os.path.isabs(relative) else os.path.join(self.root, relative)

    def has_files(self, files: Iterable[FileRecord]) -> bool:
        """Whether every file of these records is present (not checked against its checksum)."""
        return all(os.path.exists(self.abspath(f.path)) for f in files)

    # -- write ----------------------------------------------------------------------------
    def formatter_name(self, dataset_type: str, storage_class: StorageClass) -> str:
        return self.formatter_overrides.get(dataset_type) or storage_class.formatter

    def planned_path(self, ref: DatasetRef) -> str:
        """The relative path `prepare` will write ``ref`` to (executors journal it beforehand)."""
        storage_class = get_storage_class(ref.dataset_type.storage_class)
        formatter = formatter_for(storage_class, self.formatter_name(ref.dataset_type.name, storage_class))
        return self.relative_path(ref, self.template_values(ref), formatter.extension)

    def plan(self, ref: DatasetRef, obj: Any, *, fresh_name: bool = False) -> list[PlannedWrite]:
        """Validate ``obj`` and choose where it goes; no file-system change.

        ``fresh_name``: if the template's path is taken (the dataset being replaced lives there),
        use a new name beside it, so the old bytes stay intact until the registry no longer
        references them.
        """
        storage_class = get_storage_class(ref.dataset_type.storage_class)
        storage_class.validate(obj, dataset_type=ref.dataset_type.name)
        formatter = formatter_for(storage_class, self.formatter_name(ref.dataset_type.name, storage_class))
        rel = self.relative_path(ref, self.template_values(ref), formatter.extension)
        if fresh_name:
            rel = self._fresh(rel, formatter.extension)
        return [PlannedWrite(obj, rel, formatter, storage_class.name)]

    def _fresh(self, rel: str, extension: str) -> str:
        """``rel`` if nothing is there, else the same name with ``~<random>`` before the extension."""
        if not os.path.lexists(os.path.join(self.root, rel)):
            return rel
        token = os.urandom(4).hex()
        if extension and rel.endswith(extension):
            return f"{rel[:-len(extension)]}~{token}{extension}"
        return f"{rel}~{token}"

    def stage(self, planned: PlannedWrite) -> PreparedWrite:
        """Serialise and write to a temporary name next to the final path (see `StagedFile`)."""
        staged = self._stage(planned.formatter, planned.obj, os.path.join(self.root, planned.path))
        return PreparedWrite(staged, planned.path, planned.formatter.name, planned.storage_class, planned.component)

    def prepare(self, ref: DatasetRef, obj: Any) -> list[PreparedWrite]:
        """`plan` and `stage` in one: nothing is visible until ``commit``."""
        return [self.stage(p) for p in self.plan(ref, obj)]

    @staticmethod
    def _stage(formatter: Any, obj: Any, full: str) -> StagedFile | StagedDirectory:
        # Formatters of directory datasets (zarr) stage themselves; the others give bytes.
        stage_to = getattr(formatter, "stage_to", None)
        return stage_to(obj, full) if stage_to is not None else stage(full, formatter.to_bytes(obj))

    def plan_component(self, ref: DatasetRef, component: str, obj: Any, parent_formatter: str, *,
                       fresh_name: bool = False) -> PlannedWrite:
        """Plan one component of the existing composite ``ref`` written on its own (e.g. a new WCS)."""
        from ..errors import StorageClassError

        parent_class = get_storage_class(ref.dataset_type.storage_class)
        component_class = parent_class.component(component)
        allowed: frozenset[str] = getattr(formatter_for(parent_class, parent_formatter), "standalone_components",
                                          frozenset())
        if component not in allowed:
            raise StorageClassError(
                f"component {component!r} of {ref.dataset_type.name!r} (storage class {parent_class.name!r}, "
                f"formatter {parent_formatter!r}) cannot be written on its own; components that can: "
                f"{sorted(allowed) or 'none'}"
            )
        component_class.validate(obj, dataset_type=f"{ref.dataset_type.name}.{component}")
        formatter = formatter_for(component_class)
        rel = self.relative_path(ref, self.template_values(ref), formatter.extension, component=component)
        if fresh_name:
            rel = self._fresh(rel, formatter.extension)
        return PlannedWrite(obj, rel, formatter, component_class.name, component)

    def write_unregistered(self, items: Sequence[tuple[DatasetRef, Any]]) -> list[list[FileRecord]]:
        """Write the files of each ``(ref, obj)`` at their final paths now and return their records,
        for the caller to register later (an executor's worker writes a quantum's outputs, its driver
        registers in bulk; the driver journaled the paths first with `Butler.intend_writes`). All or
        nothing: on failure, no file this call put in place is left (those of earlier items too).

        A file may already be at a path when Dask re-executes a quantum whose result was lost with
        a worker: the driver refused to start if any output path held a file it had not journaled,
        so a file there now is this dataset's own earlier output, possibly registered already: it is
        kept as it is (never replaced under a recorded checksum) and described by its own bytes.
        """
        written: list[PreparedWrite] = []
        out = []
        try:
            for ref, obj in items:
                prepared = self.prepare(ref, obj)
                written += prepared
                out.append([self._commit_or_adopt(p) for p in prepared])
        except BaseException:  # an adopted file (state "discarded") is never removed: it may be registered
            self.remove_files(p.path for p in written if p.staged.state == "committed")
            self.discard(written)
            raise
        return out

    @staticmethod
    def _commit_or_adopt(p: PreparedWrite) -> FileRecord:
        from ..registry._datasets import FileRecord
        from ._directory_io import checksum_directory
        from ._file_io import checksum_file

        try:
            p.staged.commit()
            checksum, size = p.staged.checksum, p.staged.size
        except FileExistsError:
            p.staged.discard()
            if os.path.isdir(p.staged.path):
                size, checksum = checksum_directory(p.staged.path)
            else:
                checksum, size = checksum_file(p.staged.path), os.path.getsize(p.staged.path)
        return FileRecord(p.component, p.path, p.formatter, p.storage_class, checksum, size)

    @staticmethod
    def commit(prepared: Iterable[PreparedWrite]) -> None:
        """Move staged files into place, never over an existing file (an orphan of a crashed
        write, or a file of another dataset): that is a conflict."""
        for p in prepared:
            try:
                p.staged.commit()
            except FileExistsError:
                from ..errors import ConflictError

                raise ConflictError(
                    f"file {p.staged.path} already exists but is not registered to this dataset (left by an "
                    "interrupted write?); `butler verify --orphans REPO` lists such files and `butler cleanup "
                    "REPO` removes those an interrupted write left"
                ) from None

    def discard(self, prepared: Iterable[PreparedWrite]) -> None:
        """Drop staged files (and those already moved into place: their registration failed) and
        the directories made for them that are now empty."""
        dirs = set()
        for p in prepared:
            if p.staged.state == "committed":
                remove_path(p.staged.path)
            p.staged.discard()
            dirs.add(os.path.dirname(p.staged.path))
        self.prune_empty_dirs(dirs)

    def prune_empty_dirs(self, dirs: Iterable[str]) -> None:
        """Remove directories that are empty now, deepest first, never the root or above it."""
        from ._file_io import _known_dirs

        for d in sorted(dirs, key=len, reverse=True):
            while d.startswith(self.root + os.sep) and d != self.root:
                try:
                    os.rmdir(d)
                except OSError:
                    break
                _known_dirs.discard(d)
                d = os.path.dirname(d)

    # -- read -----------------------------------------------------------------------------
    def read(self, ref: DatasetRef, files: Sequence[Any], *, component: str | None = None,
             parameters: Mapping[str, Any] | None = None, verify: bool = True) -> Any:
        """Read a dataset (or one component) from its file records.

        With ``verify`` (the default) every file read is checked against the size and checksum
        recorded when it was written (see `butler.datastore._verified_reads`); a mismatch raises
        `ChecksumError` naming the dataset and the file. ``verify=False`` skips the check for
        trusted fast paths (chunks of zarr stores are still checked by their crc32c).
        """
        if not files:
            raise DatasetNotFoundError(f"{ref} has no stored file (registered without a file?)")
        record = next((f for f in files if not f.component), files[0])
        # Components written on their own after the composite (e.g. a recalibrated WCS).
        extras = {f.component: f for f in files if f.component and f is not record}
        path = self.abspath(record.path)
        storage_class = get_storage_class(record.storage_class)
        if component is not None:
            storage_class.component(component)  # unknown component -> StorageClassError naming the known ones
        formatter = formatter_for(storage_class, record.formatter)
        try:
            if extras:
                read_composite = getattr(formatter, "read_composite", None)
                if read_composite is not None:
                    overrides = {name: (lambda f=f: self._read_record(ref, f, verify=verify))
                                 for name, f in extras.items()}
                    verified = (lambda: load_verified(path, record.checksum, record.file_size, formatter,
                                                      parameters)) if verify else None
                    return read_composite(path, component=component, parameters=parameters, overrides=overrides,
                                          verified=verified)
                if component in extras:
                    return self._read_record(ref, extras[component], parameters, verify=verify)
            return self._read_file(formatter, record, path, component, parameters, verify)
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"the file of {ref.dataset_type.name} {ref.data_id} in run {ref.run!r} is missing: {path} "
                "(`butler verify` lists every missing or corrupted file)"
            ) from None
        except ChecksumError as err:
            if getattr(err, "ref", None) is not None:
                raise  # already names the dataset (a component file read inside a composite read)
            raise _damaged(ref, "", err) from err

    @staticmethod
    def formatter_of(record: FileRecord) -> Any:
        """The formatter that reads the file of ``record``."""
        return formatter_for(get_storage_class(record.storage_class), record.formatter)

    def decode(self, ref: DatasetRef, record: FileRecord, data: bytes, *, component: str | None = None,
               parameters: Mapping[str, Any] | None = None) -> Any:
        """The dataset (or component) in ``data``, the bytes of its single file ``record``, verified
        already by the caller (a remote client checked them as they arrived), as `read` would decode
        them; None when the formatter must read from a file instead (then write the bytes and `read`)."""
        storage_class = get_storage_class(record.storage_class)
        if component is not None:
            storage_class.component(component)
        formatter = formatter_for(storage_class, record.formatter)
        formatter.check_request(component, parameters)
        if formatter.reads_from_file(parameters):
            return None
        return formatter.read_verified(self.abspath(record.path), data, component=component, parameters=parameters)

    @staticmethod
    def _read_file(formatter: Any, record: Any, path: str, component: str | None,
                   parameters: Mapping[str, Any] | None, verify: bool) -> Any:
        if verify:
            formatter.check_request(component, parameters)  # a bad request fails before any byte is read
            verified = load_verified(path, record.checksum, record.file_size, formatter, parameters)
            if verified is not None:
                return formatter.read_verified(path, verified, component=component, parameters=parameters)
        return formatter.read(path, component=component, parameters=parameters)

    def _read_record(self, ref: DatasetRef, record: Any, parameters: Mapping[str, Any] | None = None, *,
                     verify: bool = True) -> Any:
        """Read the file of one record (a component written on its own) with its own formatter."""
        formatter = formatter_for(get_storage_class(record.storage_class), record.formatter)
        path = self.abspath(record.path)
        try:
            return self._read_file(formatter, record, path, None, parameters, verify)
        except FileNotFoundError:
            raise DatasetNotFoundError(
                f"the {record.component!r} file of {ref.dataset_type.name} {ref.data_id} in run {ref.run!r} "
                f"is missing: {path}"
            ) from None
        except ChecksumError as err:
            if getattr(err, "ref", None) is not None:
                raise
            raise _damaged(ref, record.component, err) from err

    # -- removal and checks -------------------------------------------------------------------
    def remove_files(self, relative_paths: Iterable[str]) -> None:
        dirs = set()
        for rel in relative_paths:
            full = self.abspath(rel)
            remove_path(full)  # a file, or a directory dataset (zarr store)
            dirs.add(os.path.dirname(full))
        self.prune_empty_dirs(dirs)  # directories that became empty, deepest first, never above the root

    def verify(self, records: Iterable[tuple[str, str | None, int | None]]) -> list[VerifyProblem]:
        """Recompute checksums and sizes of (path, checksum, size) records; list every problem."""
        problems = []
        for rel, checksum, size in records:
            full = self.abspath(rel)
            try:
                if checksum and checksum.startswith(MANIFEST_PREFIX):  # a store: name each damaged member
                    problems += [VerifyProblem(rel, kind, detail, member)
                                 for member, kind, detail in directory_problems(full, checksum, size)]
                elif checksum:
                    verify_path(full, checksum, size)
                elif not os.path.exists(full):
                    raise FileNotFoundError(full)
            except FileNotFoundError:
                problems.append(VerifyProblem(rel, "missing", f"file {full} does not exist"))
            except ChecksumError as err:
                problems.append(VerifyProblem(rel, "checksum", str(err)))
        return problems


def _damaged(ref: DatasetRef, component: str, err: ChecksumError) -> ChecksumError:
    """``err`` (which names the file) prefixed with the dataset it belongs to; ``.ref`` is the dataset."""
    which = f"the {component!r} file of " if component else ""
    damaged = ChecksumError(
        f"{which}{ref.dataset_type.name} {ref.data_id} in run {ref.run!r} is damaged: {err} "
        "(`butler verify` lists every damaged file)"
    )
    damaged.ref = ref
    return damaged
