"""What a task may ask the framework about its quantum besides its inputs.

A task's ``run`` receives ``context=`` when its signature has that keyword: the quantum's data
ID (with implied values), dimension records the planner attached (the coadd flavor), and the
registered skymaps, rebuilt from the repository once per worker process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from butler import DataCoordinate

if TYPE_CHECKING:
    from butler.skymap import SkyMap

__all__ = ["QuantumContext"]


@dataclass
class QuantumContext:
    data_id: DataCoordinate
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    butler: Any = None  # read-only access, for skymaps and records; tasks must not write through it

    def record(self, element: str) -> dict[str, Any]:
        """Record fields of one dimension of the quantum's data ID (e.g. ``flavor``)."""
        try:
            return self.records[element]
        except KeyError:
            raise KeyError(f"no {element!r} record attached to quantum {self.data_id}; "
                           f"attached: {sorted(self.records)}") from None

    def skymap(self, name: str | None = None) -> SkyMap:
        """The skymap of the quantum (or the one named), rebuilt from its stored configuration."""
        name = name or self.data_id["skymap"]
        skymap: SkyMap = self.butler.get_skymap(name)
        return skymap
