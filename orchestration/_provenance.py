"""Provenance: init-outputs written once per run and compared on every later use.

Each task's config (and its declared InitOutputs, e.g. an output schema) and the versions of
the packages in the environment are datasets with no dimensions in the output run. Writing them
is insert-if-absent through the registry's unique constraint: of any number of concurrent
writers exactly one writes, and every other one reads the stored value and compares; a
difference fails fast and says which keys differ.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
from typing import TYPE_CHECKING, Any

from butler import DatasetType
from butler.errors import ButlerError, ConflictError

from ._task import config_to_dict

if TYPE_CHECKING:
    from butler import Butler

    from ._pipeline import TaskDef
    from ._plan import Plan

__all__ = ["ProvenanceMismatchError", "init_output_types", "package_versions", "write_init_outputs",
           "write_once_and_compare"]

PACKAGES = ("butler", "numpy", "astropy", "sqlalchemy", "dask", "distributed", "zarr", "pyarrow", "lsst-sphgeom")


class ProvenanceMismatchError(ButlerError, ValueError):
    """An init-output of this run differs from what the run already recorded."""


def init_output_types(task_def: TaskDef) -> dict[str, DatasetType]:
    out = {"config": DatasetType(f"{task_def.label}_config", (), "StructuredData")}
    for name, conn in task_def.task_class.init_outputs().items():
        out[name] = DatasetType(conn.dataset_type, (), conn.storage_class)
    return out


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _normalise(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=repr))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}{key}"
            if key not in old:
                out.append(f"{path}: absent before, now {new[key]!r}")
            elif key not in new:
                out.append(f"{path}: was {old[key]!r}, now absent")
            else:
                out.extend(_differences(old[key], new[key], path + "."))
        return out
    return [] if old == new else [f"{prefix.rstrip('.') or 'value'}: was {old!r}, now {new!r}"]


def write_once_and_compare(butler: Butler, dataset_type: DatasetType, obj: Any, run: str) -> bool:
    """Store ``obj`` unless the run has it; otherwise compare. Returns True if this call wrote it."""
    butler.register_dataset_type(dataset_type)  # idempotent, also when executors race to it
    try:
        butler.put(obj, dataset_type.name, {}, run=run)
        return True
    except ConflictError:
        stored = butler.get(dataset_type.name, {}, collections=[run])
    if dataset_type.storage_class in ("StructuredData", "StructuredDataYaml"):
        diffs = _differences(_normalise(stored), _normalise(obj))
    else:
        diffs = [] if _equal(stored, obj) else ["the stored object differs"]
    if diffs:
        raise ProvenanceMismatchError(
            f"{dataset_type.name!r} of run {run!r} differs from this execution's: {'; '.join(diffs[:10])}"
            + (f" (and {len(diffs) - 10} more)" if len(diffs) > 10 else "")
            + "; use a new output run, or restore the original configuration/environment"
        )
    return False


def _equal(a: Any, b: Any) -> bool:
    try:
        result = a == b
        return bool(result.all()) if hasattr(result, "all") else bool(result)
    except Exception:  # noqa: BLE001 - user objects' == may raise anything (shapes, types); repr decides then
        return repr(a) == repr(b)


def write_init_outputs(plan: Plan, butler: Butler) -> None:
    """Write or compare every task's config and init-outputs, and the package versions."""
    run = plan.output_run
    for d in plan.tasks:
        types = init_output_types(d)
        objects = {"config": config_to_dict(d.config)}
        task = d.make_task()
        objects.update(task.make_init_outputs())
        for name, dt in types.items():
            if name not in objects:
                raise ProvenanceMismatchError(f"{d.label}: make_init_outputs() returned no {name!r}")
            write_once_and_compare(butler, dt, objects[name], run)
    write_once_and_compare(butler, DatasetType("packages", (), "StructuredData"), package_versions(), run)
