"""Where a dataset's file is: an absolute path that standard tools can open.

Paths are stored relative to the repository root (so a repository can move), except for files
ingested with transfer="direct", stored as the absolute path they were ingested from; a zarr
store is a directory. A component written on its own has its own file; other components live in
their parent's file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import DatasetNotFoundError

if TYPE_CHECKING:
    from .._dataset_ref import DatasetRef
    from ..datastore._interface import Datastore
    from ..registry._registry import Registry

__all__ = ["get_uris"]


def get_uris(registry: Registry, datastore: Datastore, refs: Sequence[DatasetRef]) -> list[str]:
    """The absolute path of each ref's main file (its component's own file if it has one), in
    one query per 5,000 refs; a ref without a stored file is a `DatasetNotFoundError`."""
    with registry.transaction() as conn:
        files = registry.datasets.files_of(conn, [r.id for r in refs])
    out = []
    for ref in refs:
        records = files.get(ref.id)
        if not records:
            raise DatasetNotFoundError(
                f"{ref.dataset_type.name} {ref.data_id} in run {ref.run!r} (id {ref.id}) has no stored file in "
                f"{datastore.root}: it is not registered there, or was registered without a file"
            )
        wanted = ref.component or ""
        record = next((f for f in records if f.component == wanted), None)
        if record is None:
            record = next((f for f in records if not f.component), records[0])
        out.append(datastore.abspath(record.path))
    return out
