"""Data ID packers: property tests (round trips, bounds, n_bits, object IDs) and error messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from butler.dimensions._packers import (
    DataIdPacker,
    ExposureDetectorPacker,
    ObjectIdPacker,
    TractPatchBandPacker,
    TractPatchPacker,
    VisitDetectorPacker,
    packer_for_instrument,
)
from butler.errors import DataIdError

MAXIMA = st.lists(st.integers(1, 2**40), min_size=1, max_size=5).filter(
    lambda ms: sum((m - 1).bit_length() for m in ms) <= 64)


SIZES = st.integers(0, 40)


def packer_of(maxima: list[int]) -> DataIdPacker:
    return DataIdPacker([(f"f{i}", m) for i, m in enumerate(maxima)])


@st.composite
def packer_and_values(draw: st.DrawFn, size: st.SearchStrategy[int] = SIZES) -> tuple:
    maxima = draw(MAXIMA)
    n = draw(size)
    values = {f"f{i}": np.array(draw(st.lists(st.integers(0, m - 1), min_size=n, max_size=n)), dtype=np.int64)
              for i, m in enumerate(maxima)}
    return packer_of(maxima), values


# -- properties --------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(packer_and_values())
def test_round_trip(case: tuple) -> None:
    packer, values = case
    ids = packer.pack(values)
    assert ids.dtype == np.uint64 and ids.shape == values["f0"].shape
    out = packer.unpack(ids)
    assert list(out) == list(packer.names)
    for name, v in values.items():
        assert out[name].dtype == np.int64
        np.testing.assert_array_equal(out[name], v)
    if len(ids):  # scalars give the same integers, and unpack to Python ints
        scalar = packer.pack({name: int(v[0]) for name, v in values.items()})
        assert type(scalar) is int and scalar == int(ids[0])
        assert packer.unpack(scalar) == {name: int(v[0]) for name, v in values.items()}
    # packed IDs sort like the tuples of their fields
    order = np.argsort(ids, kind="stable")
    rows = list(zip(*(v.tolist() for v in values.values())))
    assert [rows[i] for i in order] == sorted(rows)


@settings(max_examples=100, deadline=None)
@given(MAXIMA)
def test_n_bits_and_bounds(maxima: list[int]) -> None:
    packer = packer_of(maxima)
    assert packer.n_bits == sum((m - 1).bit_length() for m in maxima) <= 64
    top = {f"f{i}": np.array([m - 1, 0]) for i, m in enumerate(maxima)}
    ids = packer.pack(top)
    assert int(ids[0]) < 2**packer.n_bits and int(ids[1]) == 0
    for i, m in enumerate(maxima):
        for bad in (m, -1):
            values = dict(top, **{f"f{i}": np.array([0, m - 1, bad])})
            with pytest.raises(DataIdError, match=rf"f{i} value {bad} at index 2 is out of range \[0, {m}\)"):
                packer.pack(values)
            with pytest.raises(DataIdError, match=rf"f{i} value {bad} is out of range \[0, {m}\)"):
                packer.pack({name: int(v[0]) for name, v in dict(top, **{f"f{i}": np.array([bad])}).items()})


@settings(max_examples=100, deadline=None)
@given(packer_and_values(size=st.integers(1, 30)), st.data())
def test_object_id_round_trip(case: tuple, data: st.DataObject) -> None:
    packer, values = case
    counter_bits = data.draw(st.integers(0, 64 - packer.n_bits))
    objects = ObjectIdPacker(packer, counter_bits)
    assert objects.n_bits == packer.n_bits + counter_bits
    n = len(values["f0"])
    counters = np.array(data.draw(st.lists(st.integers(0, 2**counter_bits - 1), min_size=n, max_size=n)),
                        dtype=np.uint64)
    ids = objects.pack_data_id(values, counters)
    base, got = objects.unpack(ids)
    np.testing.assert_array_equal(base, packer.pack(values))
    np.testing.assert_array_equal(got, counters.astype(np.int64))
    np.testing.assert_array_equal(packer.unpack(base)["f0"], values["f0"])
    with pytest.raises(DataIdError, match=rf"counter value {2**counter_bits} at index 0 is out of range"):
        objects.pack(base, np.full(n, 2**counter_bits, dtype=np.uint64))
    with pytest.raises(ValueError, match="more than the 64 of an object ID"):
        ObjectIdPacker(packer, 65 - packer.n_bits)


@settings(max_examples=100, deadline=None)
@given(MAXIMA, st.integers(0, 2**64 - 1))
def test_unpack_rejects_ids_outside_the_ranges(maxima: list[int], packed: int) -> None:
    """Any integer either unpacks into valid ranges (and packs back to itself) or raises."""
    packer = packer_of(maxima)
    try:
        fields = packer.unpack(np.array([packed], dtype=np.uint64))
    except DataIdError as err:
        assert "does not unpack into valid ranges" in str(err)
        with pytest.raises(DataIdError):
            packer.unpack(packed)
    else:
        assert int(packer.pack(fields)[0]) == packed
        assert packer.pack(packer.unpack(packed)) == packed


# -- specific packers and inputs ---------------------------------------------------------------
def test_tract_patch_band() -> None:
    packer = TractPatchBandPacker(18938, 100, ["g", "r", "i"])
    assert packer.fields == (("tract", 18938), ("patch", 100), ("band", 3)) and packer.n_bits == 15 + 7 + 2
    data = {"tract": np.array([0, 9000, 18937]), "patch": np.array([45, 0, 99]), "band": np.array(["r", "g", "i"])}
    ids = packer.pack(data)
    assert int(ids[1]) == (9000 << 9) | (0 << 2) | 0
    out = packer.unpack(ids)
    assert out["band"].dtype.kind == "U" and out["band"].tolist() == ["r", "g", "i"]
    assert out["tract"].tolist() == [0, 9000, 18937]
    assert packer.pack({"tract": 9000, "patch": 45, "band": "i"}) == (9000 << 9) | (45 << 2) | 2
    assert packer.unpack((9000 << 9) | (45 << 2) | 2) == {"tract": 9000, "patch": 45, "band": "i"}
    # lists, object arrays and broadcasting scalars against arrays
    listed = packer.pack({"tract": 5, "patch": [1, 2], "band": np.array(["g", "i"], dtype=object)})
    assert packer.unpack(listed)["tract"].tolist() == [5, 5]
    assert TractPatchBandPacker(10, 10, {"r": 1, "g": 0}).bands == ("g", "r")


def test_unknown_band_lists_known_bands() -> None:
    packer = TractPatchBandPacker(10, 10, ["g", "r", "i"])
    with pytest.raises(DataIdError, match=r"band 'z' at index 2 is not one this packer was built with; "
                                          r"known bands: \['g', 'r', 'i'\]"):
        packer.pack({"tract": [1, 2, 3], "patch": [1, 2, 3], "band": ["g", "i", "z"]})
    with pytest.raises(DataIdError, match="band 'rr' at index 1 is not one"):
        packer.pack({"tract": [1, 2], "patch": [1, 2], "band": ["g", "rr"]})
    with pytest.raises(DataIdError, match="band 'y' is not one this packer was built with"):
        packer.pack({"tract": 1, "patch": 1, "band": "y"})
    with pytest.raises(DataIdError, match="band values must be strings"):
        packer.pack({"tract": [1], "patch": [1], "band": [2]})
    with pytest.raises(ValueError, match="bands must be distinct"):
        TractPatchBandPacker(10, 10, ["g", "g"])
    with pytest.raises(ValueError, match="bands must map to the indices 0..1"):
        TractPatchBandPacker(10, 10, {"g": 0, "r": 5})


@pytest.mark.parametrize("bands", [["g", "r"], ["gg", "r", "N921"], ["white", "u"], ["ab", "cd", "a"]])
def test_band_names_of_any_length(bands: list[str]) -> None:
    packer = TractPatchBandPacker(4, 4, bands)
    for width in {len(b) for b in bands} | {8}:  # numpy arrays of each label width, and wider
        picked = [b for b in bands if len(b) <= width] * 3
        values = np.array(picked, dtype=f"<U{width}")
        n = len(values)
        ids = packer.pack({"tract": np.zeros(n, dtype=np.int64), "patch": np.ones(n, dtype=np.int64), "band": values})
        assert packer.unpack(ids)["band"].tolist() == picked
    one_char = np.array(["q"], dtype="<U1")  # not a band, but its code point is in no table either
    with pytest.raises(DataIdError, match="band 'q' at index 0"):
        packer.pack({"tract": [0], "patch": [0], "band": one_char})


def test_input_dtypes() -> None:
    packer = VisitDetectorPacker(10_000_000, 256)
    assert packer.n_bits == 32
    for dtype in (np.int32, np.uint16, np.uint64, np.int8):
        ids = packer.pack({"visit": np.array([1, 100], dtype=dtype), "detector": np.array([3, 4], dtype=dtype)})
        assert packer.unpack(ids)["visit"].tolist() == [1, 100]
    with pytest.raises(DataIdError, match="visit values must be integers, got an array of float64"):
        packer.pack({"visit": np.array([1.0]), "detector": [3]})
    with pytest.raises(DataIdError, match="visit must be an integer"):
        packer.pack({"visit": 1.5, "detector": 3})
    with pytest.raises(DataIdError, match=r"without \['detector'\]; this packer needs \['visit', 'detector'\]"):
        packer.pack({"visit": [1], "instrument": "SimCam"})
    with pytest.raises(DataIdError, match="visit value 10000000 at index 1"):
        packer.pack({"visit": [0, 10_000_000], "detector": [0, 0]})
    assert packer.pack({"visit": np.array([], dtype=np.int64), "detector": []}).shape == (0,)
    grid = packer.pack({"visit": np.arange(6).reshape(2, 3), "detector": 7})
    assert grid.shape == (2, 3) and packer.unpack(grid)["detector"].tolist() == [[7] * 3] * 2


def test_unpack_errors() -> None:
    packer = TractPatchPacker(18938, 100)  # 15 + 7 bits; patch codes 100..127 are invalid
    with pytest.raises(DataIdError, match=r"packed ID 101 at index 1 does not unpack into valid ranges: "
                                          r"patch would be 101, not in \[0, 100\)"):
        packer.unpack(np.array([5, 101], dtype=np.uint64))
    with pytest.raises(DataIdError, match="index 2 does not unpack into valid ranges"):
        packer.unpack(np.array([0, 1, 1 << 22]))
    with pytest.raises(DataIdError, match=r"packed ID -1 at index 0 does not unpack"):
        packer.unpack(np.array([-1, 3]))
    with pytest.raises(DataIdError, match=r"tract < 18938"):
        packer.unpack(np.array([18938 << 7]))
    with pytest.raises(DataIdError, match="must be in"):
        packer.unpack(-5)
    with pytest.raises(DataIdError, match="packed IDs must be integers"):
        packer.unpack(np.array([1.0]))


def test_full_64_bits_and_zero_bit_fields() -> None:
    wide = DataIdPacker([("a", 2**64)])
    ids = np.array([0, 2**64 - 1, 2**63], dtype=np.uint64)
    assert wide.n_bits == 64 and wide.unpack(ids)["a"].view(np.uint64).tolist() == ids.tolist()
    mixed = DataIdPacker([("a", 1), ("b", 2**32), ("c", 1), ("d", 2**32)])
    assert mixed.n_bits == 64
    vals = {"a": [0, 0], "b": [2**32 - 1, 7], "c": [0, 0], "d": [1, 2**32 - 1]}
    assert {k: v.tolist() for k, v in mixed.unpack(mixed.pack(vals)).items()} == vals
    with pytest.raises(ValueError, match=r"fields need 65 bits \(a: 64, b: 1\); a packed ID has at most 64"):
        DataIdPacker([("a", 2**64), ("b", 2)])
    with pytest.raises(ValueError, match="max of field 'b' must be an integer >= 1"):
        DataIdPacker([("a", 4), ("b", 0)])


def test_instrument_packers() -> None:
    visit = packer_for_instrument(1 << 20, 16, 1 << 21, "visit_detector")
    exposure = packer_for_instrument(1 << 20, 16, 1 << 21, "exposure_detector")
    assert isinstance(visit, VisitDetectorPacker) and visit.n_bits == 24
    assert isinstance(exposure, ExposureDetectorPacker) and exposure.n_bits == 25
    assert visit.pack({"visit": 12, "detector": 3}) == (12 << 4) | 3
    with pytest.raises(ValueError, match=r"unknown instrument packer 'tract'; known kinds: "
                                         r"\['visit_detector', 'exposure_detector'\]"):
        packer_for_instrument(10, 10, 10, "tract")
    assert visit == VisitDetectorPacker(1 << 20, 16) and visit != exposure
