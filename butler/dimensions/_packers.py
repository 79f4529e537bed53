"""Data ID packers: data IDs (dicts of numpy arrays or scalars) <-> unsigned 64-bit integers.

Fields are packed most significant first, each in ``(max - 1).bit_length()`` bits, so packed IDs
sort like their fields. Bits rather than mixed-radix products because shifts and masks are the
cheapest numpy operations (unpacking needs no division); the price is some unused codes when a
maximum is not a power of two.

Why it is fast: packing shifts and ORs into one uint64 output array in place; int64 inputs are
*viewed* as uint64 (after the range check), not copied; unpacked fields are uint64 results viewed
as int64. A range check is one ``max`` reduction on an unsigned view (a negative value wraps to a
huge one), with no boolean temporaries; only when a check fails is the first offending element
located, for the error message. No Python loop per element.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import DataIdError

__all__ = [
    "DataIdPacker",
    "ExposureDetectorPacker",
    "ObjectIdPacker",
    "TractPatchBandPacker",
    "TractPatchPacker",
    "VisitDetectorPacker",
    "packer_for_instrument",
]

_U64 = np.dtype(np.uint64)
_I64 = np.dtype(np.int64)


class DataIdPacker:
    """Packs the ordered ``fields`` ((name, max) pairs; values in [0, max)) into ``n_bits`` bits.

    ``labels`` maps a field name to the strings its values stand for (e.g. bands): packing takes
    the strings, unpacking returns them; the field's max is the number of labels.
    """

    def __init__(self, fields: Sequence[tuple[str, int]], *, labels: Mapping[str, Sequence[str]] | None = None) -> None:
        fields = [(str(name), maximum) for name, maximum in fields]
        if not fields:
            raise ValueError("a packer needs at least one field")
        names = [name for name, _ in fields]
        if len(set(names)) != len(names):
            raise ValueError(f"field names must be unique, got {names}")
        for name, maximum in fields:
            if not isinstance(maximum, (int, np.integer)) or isinstance(maximum, bool) or maximum < 1:
                raise ValueError(f"max of field {name!r} must be an integer >= 1, got {maximum!r}")
        self.fields: tuple[tuple[str, int], ...] = tuple((name, int(maximum)) for name, maximum in fields)
        self._bits = tuple((maximum - 1).bit_length() for _, maximum in self.fields)
        self.n_bits: int = sum(self._bits)
        if self.n_bits > 64:
            layout = ", ".join(f"{name}: {bits}" for (name, _), bits in zip(self.fields, self._bits))
            raise ValueError(f"fields need {self.n_bits} bits ({layout}); a packed ID has at most 64")
        self._shifts = tuple(sum(self._bits[i + 1 :]) for i in range(len(self._bits)))
        self._labels: dict[str, _Labels] = {}
        for name, values in (labels or {}).items():
            if name not in names:
                raise ValueError(f"labels given for {name!r}, which is not a field ({names})")
            values = tuple(values)
            if len(set(values)) != len(values) or len(values) != dict(self.fields)[name]:
                raise ValueError(f"labels of {name!r} must be {dict(self.fields)[name]} distinct strings, got {values}")
            self._labels[name] = _Labels(name, values)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}<{m}" for n, m in self.fields)
        return f"{type(self).__name__}({fields}; n_bits={self.n_bits})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataIdPacker) and (self.fields, self._label_values) == (other.fields, other._label_values)

    def __hash__(self) -> int:
        return hash(self.fields)

    @property
    def _label_values(self) -> dict[str, tuple[str, ...]]:
        return {name: labels.values for name, labels in self._labels.items()}

    # -- packing ---------------------------------------------------------------------------
    def pack(self, data_id: Mapping[str, Any]) -> Any:
        """uint64 array of packed IDs (a Python int when every value is a scalar).

        Values broadcast against each other; keys other than the fields are ignored.
        """
        missing = [name for name in self.names if name not in data_id]
        if missing:
            raise DataIdError(f"cannot pack a data ID without {missing}; this packer needs {list(self.names)}")
        raw = [data_id[name] for name in self.names]
        if all(np.ndim(v) == 0 for v in raw):
            packed = 0
            for (name, maximum), width, value in zip(self.fields, self._bits, raw):
                packed = (packed << width) | self._scalar_code(name, maximum, value)
            return packed
        codes = [self._codes(name, maximum, value) for (name, maximum), value in zip(self.fields, raw)]
        out = np.empty(np.broadcast_shapes(*(c.shape for c in codes)), dtype=_U64)
        bits = self._bits
        # Horner's scheme in place: out = ((c0 << b1 | c1) << b2 | c2) ...; the first shift also copies.
        np.left_shift(codes[0], bits[1] if len(bits) > 1 else 0, out=out)
        for i in range(1, len(codes)):
            if bits[i]:  # a 0-bit field only holds 0
                out |= codes[i]
            if i + 1 < len(bits) and bits[i + 1]:
                out <<= bits[i + 1]
        return out

    def _scalar_code(self, name: str, maximum: int, value: Any) -> int:
        if name in self._labels:
            return self._labels[name].code(value)
        if isinstance(value, np.ndarray):
            value = value[()]
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
            raise DataIdError(f"{name} must be an integer, got {value!r}")
        if not 0 <= value < maximum:
            raise DataIdError(f"{name} value {value} is out of range [0, {maximum})")
        return int(value)

    def _codes(self, name: str, maximum: int, value: Any) -> np.ndarray:
        """uint64 codes of one field (a view of the input when possible), range-checked."""
        if name in self._labels:
            return self._labels[name].codes(value)
        values = np.asarray(value)
        if values.size == 0:  # e.g. an empty list, which numpy makes float64
            return np.zeros(values.shape, dtype=_U64)
        if values.dtype.kind not in "iu":
            if values.dtype.kind == "O":
                try:
                    values = values.astype(_I64)
                except (OverflowError, TypeError, ValueError):
                    raise DataIdError(f"{name} values must be integers in [0, {maximum})") from None
            else:
                raise DataIdError(f"{name} values must be integers, got an array of {values.dtype}")
        if _out_of_range(values, maximum):
            bad = np.flatnonzero(((values < 0) | (values >= maximum)).ravel())[0]
            raise DataIdError(f"{name} value {values.ravel()[bad]} at index {bad} is out of range [0, {maximum})")
        if values.dtype == _I64 or values.dtype == _U64:
            return values.view(_U64)
        return values.astype(_U64)

    # -- unpacking -------------------------------------------------------------------------
    def unpack(self, packed: Any) -> dict[str, Any]:
        """Dict of int64 arrays (str arrays for labelled fields), or of ints/strs for a scalar ID."""
        if np.ndim(packed) == 0 and not isinstance(packed, np.ndarray):
            return self._unpack_scalar(packed)
        given = np.asarray(packed)
        ids = self._as_ids(given)
        if ids.size:  # one reduction checks the high bits and the first field's range
            top = int(ids.max())
            if top >> self.n_bits or top >> self._shifts[0] >= self.fields[0][1]:
                limit = min(self.fields[0][1] << self._shifts[0], 1 << self.n_bits)
                bad = int(np.flatnonzero((ids >= np.uint64(limit)).ravel())[0]) if limit < 1 << 64 else 0
                raise DataIdError(f"packed ID {given.ravel()[bad]} at index {bad} does not unpack into valid "
                                  f"ranges: it must be in [0, {limit}) for {self.fields[0][0]} < {self.fields[0][1]}")
        result: dict[str, Any] = {}
        for i, ((name, maximum), bits, shift) in enumerate(zip(self.fields, self._bits, self._shifts)):
            masked = i > 0  # bits above the first field are known to be zero
            if shift == 0:
                field = ids & np.uint64((1 << bits) - 1) if masked else ids.copy()
            else:
                field = ids >> shift
                if masked:
                    field &= np.uint64((1 << bits) - 1)
            if masked and maximum != 1 << bits and field.size and field.max() >= maximum:
                bad = int(np.flatnonzero((field >= maximum).ravel())[0])
                raise DataIdError(f"packed ID {given.ravel()[bad]} at index {bad} does not unpack into valid ranges: "
                                  f"{name} would be {field.ravel()[bad]}, not in [0, {maximum})")
            result[name] = self._labels[name].strings(field) if name in self._labels else field.view(_I64)
        return result

    def _as_ids(self, ids: np.ndarray) -> np.ndarray:
        """uint64 IDs; signed IDs are reinterpreted (a negative one then has bits above ``n_bits``)."""
        if ids.dtype.kind not in "iu":
            raise DataIdError(f"packed IDs must be integers, got an array of {ids.dtype}")
        if ids.dtype == _U64 or ids.dtype == _I64:
            return ids.view(_U64)
        return ids.astype(_I64).view(_U64) if ids.dtype.kind == "i" else ids.astype(_U64)

    def _unpack_scalar(self, packed: Any) -> dict[str, Any]:
        if not isinstance(packed, (int, np.integer)) or isinstance(packed, (bool, np.bool_)):
            raise DataIdError(f"a packed ID must be an integer, got {packed!r}")
        value = int(packed)
        if value < 0 or value >> self.n_bits:
            raise DataIdError(f"packed ID {value} does not unpack into valid ranges: "
                              f"it must be in [0, 2**{self.n_bits})")
        result: dict[str, Any] = {}
        for (name, maximum), bits, shift in zip(self.fields, self._bits, self._shifts):
            field = (value >> shift) & ((1 << bits) - 1)
            if field >= maximum:
                raise DataIdError(f"packed ID {value} does not unpack into valid ranges: "
                                  f"{name} would be {field}, not in [0, {maximum})")
            result[name] = self._labels[name].values[field] if name in self._labels else field
        return result


class TractPatchPacker(DataIdPacker):
    """(tract, patch) of a skymap."""

    def __init__(self, max_tract: int, max_patch: int) -> None:
        super().__init__([("tract", max_tract), ("patch", max_patch)])


class TractPatchBandPacker(DataIdPacker):
    """(tract, patch, band) of a skymap; bands are given as a list (index = position) or a mapping."""

    def __init__(self, max_tract: int, max_patch: int, bands: Sequence[str] | Mapping[str, int]) -> None:
        names = _label_list("bands", bands)
        super().__init__([("tract", max_tract), ("patch", max_patch), ("band", len(names))], labels={"band": names})

    @property
    def bands(self) -> tuple[str, ...]:
        return self._labels["band"].values


class VisitDetectorPacker(DataIdPacker):
    """(visit, detector) of an instrument."""

    def __init__(self, visit_max: int, detector_max: int) -> None:
        super().__init__([("visit", visit_max), ("detector", detector_max)])


class ExposureDetectorPacker(DataIdPacker):
    """(exposure, detector) of an instrument."""

    def __init__(self, exposure_max: int, detector_max: int) -> None:
        super().__init__([("exposure", exposure_max), ("detector", detector_max)])


_INSTRUMENT_KINDS = ("visit_detector", "exposure_detector")


def packer_for_instrument(visit_max: int, detector_max: int, exposure_max: int, kind: str) -> DataIdPacker:
    """The default packer of an instrument's data IDs: ``kind`` is "visit_detector" or "exposure_detector"."""
    if kind == "visit_detector":
        return VisitDetectorPacker(visit_max, detector_max)
    if kind == "exposure_detector":
        return ExposureDetectorPacker(exposure_max, detector_max)
    raise ValueError(f"unknown instrument packer {kind!r}; known kinds: {list(_INSTRUMENT_KINDS)}")


class ObjectIdPacker:
    """Object IDs: a packed data ID in the high bits and a per-source counter in ``counter_bits`` low bits."""

    def __init__(self, base_packer: DataIdPacker, counter_bits: int) -> None:
        if not isinstance(counter_bits, int) or isinstance(counter_bits, bool) or counter_bits < 0:
            raise ValueError(f"counter_bits must be an integer >= 0, got {counter_bits!r}")
        self.base_packer = base_packer
        self.counter_bits = counter_bits
        self.n_bits = base_packer.n_bits + counter_bits
        if self.n_bits > 64:
            raise ValueError(f"{base_packer.n_bits} bits of data ID + {counter_bits} counter bits = {self.n_bits} "
                             "bits, more than the 64 of an object ID; use fewer counter bits")
        self._base = DataIdPacker([("base_id", 1 << base_packer.n_bits), ("counter", 1 << counter_bits)])

    def __repr__(self) -> str:
        return f"ObjectIdPacker({self.base_packer!r}, counter_bits={self.counter_bits})"

    def pack(self, base_ids: Any, counters: Any) -> Any:
        """Object IDs from packed data IDs and counters (uint64 array, or an int for scalars)."""
        return self._base.pack({"base_id": base_ids, "counter": counters})

    def pack_data_id(self, data_id: Mapping[str, Any], counters: Any) -> Any:
        """Object IDs from an unpacked data ID (dict of arrays or scalars) and counters."""
        return self.pack(self.base_packer.pack(data_id), counters)

    def unpack(self, ids: Any) -> tuple[Any, Any]:
        """(packed data IDs, counters) of object IDs."""
        base, counters = self._base.unpack(ids).values()
        return (base.view(_U64) if isinstance(base, np.ndarray) else base), counters


class _Labels:
    """The strings of a labelled field (e.g. bands) and their vectorised codes.

    Short fixed-width strings (numpy ``<U1``/``<U2``: most band names) are viewed as integers, so
    lookups are a gather through a code-point table (one character) or an integer ``searchsorted``
    (two), rather than string comparisons (several times faster).
    """

    def __init__(self, name: str, values: tuple[str, ...]) -> None:
        if not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"labels of {name!r} must be non-empty strings, got {list(values)}")
        self.name = name
        self.values = values
        self.index = {v: i for i, v in enumerate(values)}
        self.array = np.array(values)
        self._sorted: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # by width in characters (0: generic)
        self._lut: np.ndarray | None = None  # code point -> code of one-character labels (-1: none)

    def code(self, value: Any) -> int:
        try:
            return self.index[str(value) if isinstance(value, np.str_) else value]
        except (KeyError, TypeError):
            raise self.unknown(value, None) from None

    def codes(self, value: Any) -> np.ndarray:
        """uint64 codes of an array of strings; an unknown string is an error naming it and its index."""
        values = np.asarray(value)
        if values.dtype.kind == "O":
            values = values.astype(str)
        if values.dtype.kind != "U":
            if values.size:
                raise DataIdError(f"{self.name} values must be strings ({list(self.values)}), got {values.dtype}")
            values = values.astype(str)
        width = values.dtype.itemsize // 4
        if values.dtype.isnative and width == 1 and values.size:
            return self._codes_by_table(values)
        if values.dtype.isnative and width in (1, 2):
            keys = values.view(np.uint32 if width == 1 else np.uint64)
        else:
            keys, width = values, 0
        known, order = self._table(width)
        if len(known) == 0:
            if values.size:
                raise self.unknown(values.ravel()[0], 0)
            return np.zeros(values.shape, dtype=_U64)
        pos = np.searchsorted(known, keys)
        np.minimum(pos, len(known) - 1, out=pos)
        ok = known[pos] == keys
        if not np.all(ok):
            bad = int(np.flatnonzero(~np.asarray(ok).ravel())[0])
            raise self.unknown(values.ravel()[bad], bad)
        return order[pos]

    def _codes_by_table(self, values: np.ndarray) -> np.ndarray:
        """Codes of one-character strings through a table indexed by code point (one gather)."""
        if self._lut is None:
            singles = {ord(v): i for i, v in enumerate(self.values) if len(v) == 1}
            self._lut = np.full(max(singles, default=0) + 1, -1, dtype=_I64)
            for point, code in singles.items():
                self._lut[point] = code
        keys = values.view(np.uint32)
        if int(keys.max()) < len(self._lut):
            codes = np.take(self._lut, keys)
            if codes.min() >= 0:
                return codes.view(_U64)
        ok = (keys < len(self._lut)) & (np.take(self._lut, np.minimum(keys, len(self._lut) - 1)) >= 0)
        bad = int(np.flatnonzero(~ok.ravel())[0])
        raise self.unknown(values.ravel()[bad], bad)

    def _table(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Sorted keys of the labels that fit ``width`` characters (all labels for 0), and their codes."""
        if width not in self._sorted:
            codes = [i for i, v in enumerate(self.values) if width == 0 or len(v) <= width]
            if width:
                keys = np.array([self.values[i] for i in codes], dtype=f"<U{width}").view(
                    np.uint32 if width == 1 else np.uint64)
            else:
                keys = self.array
            order = np.argsort(keys, kind="stable")
            self._sorted[width] = (keys[order], np.array(codes, dtype=_U64)[order])
        return self._sorted[width]

    def strings(self, codes: np.ndarray) -> np.ndarray:
        """Strings of valid codes (an array of numpy str)."""
        return self.array[codes.view(_I64)]

    def unknown(self, value: Any, index: int | None) -> DataIdError:
        where = "" if index is None else f" at index {index}"
        return DataIdError(f"{self.name} {str(value)!r}{where} is not one this packer was built with; "
                           f"known {self.name}s: {list(self.values)}")


def _out_of_range(values: np.ndarray, maximum: int) -> bool:
    """Whether any value is outside [0, maximum), in one reduction when the dtype allows it.

    Viewed as unsigned, a negative value becomes one above the signed maximum, so a single ``max``
    tests both ends when ``maximum`` is not above that.
    """
    info = np.iinfo(values.dtype)
    if values.dtype.kind == "i" and maximum <= info.max + 1:
        return bool(values.view(np.dtype(f"u{values.dtype.itemsize}")).max() >= maximum)
    if values.dtype.kind == "u":
        return bool(values.max() >= maximum)
    return bool(values.min() < 0 or values.max() >= maximum)


def _label_list(what: str, labels: Sequence[str] | Mapping[str, int]) -> tuple[str, ...]:
    """Labels in index order, from a list (index = position) or a mapping label -> index 0..n-1."""
    if isinstance(labels, str):
        raise TypeError(f"{what} must be a list of strings or a mapping to indices, not the string {labels!r}")
    if isinstance(labels, Mapping):
        indices = sorted(labels.values())
        if indices != list(range(len(labels))):
            raise ValueError(f"{what} must map to the indices 0..{len(labels) - 1}, got {dict(labels)}")
        names = tuple(sorted(labels, key=labels.__getitem__))
    else:
        names = tuple(labels)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"{what} must be distinct non-empty strings, got {list(names)}")
    return names
