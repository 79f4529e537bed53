"""Public type aliases of the Butler's signatures: what each argument accepts, said once.

They are strings for the type checker (``from __future__ import annotations`` style), so
importing them costs nothing at run time and pulls in neither astropy nor the registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # the names the aliases below refer to
    from collections.abc import Mapping, Sequence
    from datetime import datetime
    from typing import Any

    from astropy.time import Time

    from ._dataset_ref import DatasetRef
    from ._dataset_type import DatasetType
    from .dimensions import DataCoordinate

__all__ = ["CollectionsLike", "DataIdLike", "DatasetTypeLike", "RefOrTypeLike", "TimeLike"]

DataIdLike: TypeAlias = "Mapping[str, Any] | DataCoordinate | None"
"""A data ID: a mapping of dimension (or alias) names to values, or a `DataCoordinate`; keyword
arguments of the same call add to it."""

CollectionsLike: TypeAlias = "str | Sequence[str] | None"
"""One collection name or glob, or a search path of them; None: the Butler's default collections."""

DatasetTypeLike: TypeAlias = "str | DatasetType"
"""A dataset type, or its registered name (``"calexp"``; ``"calexp.wcs"`` for a component)."""

RefOrTypeLike: TypeAlias = "str | DatasetType | DatasetRef"
"""What a read names: a resolved `DatasetRef`, or a dataset type (with a data ID given beside it)."""

TimeLike: TypeAlias = "Time | datetime | str | int | None"
"""An instant: astropy ``Time``, an aware or UTC ``datetime``, ISO-8601 text (TAI when it says so),
or integer nanoseconds since the Unix epoch; None: unbounded."""
