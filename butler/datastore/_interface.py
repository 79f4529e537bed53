"""What the Butler needs of a datastore, as typed interfaces (the file datastore is one implementation).

`DatastoreReader` is what reads need: read a dataset from its file records, say where a file is,
and check files against their records. A remote datastore (files fetched over HTTP or ssh into a
verified local cache) implements only this. `Datastore` adds the two-phase writes of the one write
path (``butler/_write_path.py``): plan (no I/O), stage under a temporary name, commit into place
inside the registry transaction, or discard; and `write_unregistered` for executors' workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .._dataset_ref import DatasetRef
    from .._dataset_type import DatasetType
    from ..dimensions import DimensionGroup
    from ..registry._datasets import FileRecord
    from ._datastore import PlannedWrite, PreparedWrite, VerifyProblem

__all__ = ["Datastore", "DatastoreReader"]


@runtime_checkable
class DatastoreReader(Protocol):
    """Reads of dataset files, each checked against the checksum and size in its record."""

    def read(self, ref: DatasetRef, files: Sequence[FileRecord], *, component: str | None = None,
             parameters: Mapping[str, Any] | None = None, verify: bool = True) -> Any:
        """The dataset (or one component) stored in ``files``; `ChecksumError` if a file changed."""
        ...

    def abspath(self, relative: str) -> str:
        """Where the file recorded as ``relative`` is (an absolute path or a URL)."""
        ...

    def has_files(self, files: Iterable[FileRecord]) -> bool:
        """Whether every file of these records is present (not checked against its checksum)."""
        ...

    def verify(self, records: Iterable[tuple[str, str | None, int | None]]) -> list[VerifyProblem]:
        """Problems of (path, checksum, size) records: missing files, wrong checksums or sizes."""
        ...


@runtime_checkable
class Datastore(DatastoreReader, Protocol):
    """A datastore that also writes, in the phases of the one write path."""

    root: str

    def validate_dataset_type(self, dataset_type: DatasetType, group: DimensionGroup) -> None:
        """Refuse a dataset type whose files this datastore could not name uniquely."""
        ...

    def template_values(self, ref: DatasetRef) -> dict[str, Any]:
        """The values the file template of ``ref`` is filled with (implied ones included)."""
        ...

    def planned_path(self, ref: DatasetRef) -> str:
        """The relative path a write of ``ref`` will use (journaled before workers write it)."""
        ...

    def plan(self, ref: DatasetRef, obj: Any, *, fresh_name: bool = False) -> list[PlannedWrite]:
        """Validate ``obj`` and choose its paths; no file-system change."""
        ...

    def plan_component(self, ref: DatasetRef, component: str, obj: Any, parent_formatter: str, *,
                       fresh_name: bool = False) -> PlannedWrite:
        """Plan one component of an existing composite, written on its own."""
        ...

    def stage(self, planned: PlannedWrite) -> PreparedWrite:
        """Write under a temporary name beside the final path."""
        ...

    def commit(self, prepared: Iterable[PreparedWrite]) -> None:
        """Move staged files into place, never over an existing file (`ConflictError`)."""
        ...

    def discard(self, prepared: Iterable[PreparedWrite]) -> None:
        """Drop staged files (and those already committed whose registration failed)."""
        ...

    def write_unregistered(self, items: Sequence[tuple[DatasetRef, Any]]) -> list[list[FileRecord]]:
        """Write the files of these ``(ref, object)`` at their final paths now, all or none, for the
        caller to register later."""
        ...

    def remove_files(self, relative_paths: Iterable[str]) -> None:
        """Remove files (or directory datasets) and the directories left empty."""
        ...

    def prune_empty_dirs(self, dirs: Iterable[str]) -> None:
        """Remove directories that are empty now, never the root or above it."""
        ...
