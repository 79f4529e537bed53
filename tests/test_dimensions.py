"""Unit tests of the dimension universe, dimension groups and data IDs (no repository needed).

Round trips (standardisation of user data IDs, pickling) are property-tested with hypothesis.
"""

from __future__ import annotations

import pickle

import cloudpickle
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from butler import DataCoordinate, DimensionUniverse
from butler.dimensions import DimensionGroup, coerce_value, validate_path_value
from butler.errors import ButlerError, DataIdError

UNIVERSE = DimensionUniverse.default()
SIMCAM_ALIASES = {"ccd": "detector", "ccdnum": "detector", "sensor": "detector", "filter": "physical_filter"}
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- universe -----------------------------------------------------------------------------------
def test_default_universe_is_cached_and_versioned():
    again = DimensionUniverse.default()
    assert again is UNIVERSE
    assert UNIVERSE.version == 1
    assert DimensionUniverse.from_version(UNIVERSE.version) is UNIVERSE
    assert len(UNIVERSE.digest) == 32
    for name in ("instrument", "detector", "physical_filter", "band", "day_obs", "exposure", "visit",
                 "skymap", "tract", "patch", "flavor"):
        assert name in UNIVERSE.dimensions
    # visit_detector_region is a record table, not a data ID key.
    assert "visit_detector_region" in UNIVERSE
    assert "visit_detector_region" not in UNIVERSE.dimensions


def test_unknown_universe_version_is_a_lookup_error():
    with pytest.raises(LookupError, match="version 999"):
        DimensionUniverse.from_version(999)


def test_unknown_element_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown dimension element 'detektor'.*detector"):
        UNIVERSE["detektor"]


def test_element_keys_and_fields():
    visit = UNIVERSE["visit"]
    assert visit.required == ("instrument", "visit")
    assert visit.primary_key_columns == ("instrument", "id")
    assert set(visit.implies) == {"physical_filter", "day_obs"}
    assert visit.spatial
    assert visit.field_types["exposure_time"] == "float"
    assert visit.field_types["begin"] == "time"
    assert visit.field_types["region"] == "region"
    assert UNIVERSE["patch"].required == ("skymap", "tract", "patch")
    assert UNIVERSE["detector"].key.type == "int"
    assert UNIVERSE["instrument"].key.type == "str"


def test_universe_pickles_to_the_same_object():
    assert pickle.loads(pickle.dumps(UNIVERSE)) is UNIVERSE
    assert cloudpickle.loads(cloudpickle.dumps(UNIVERSE)) is UNIVERSE


# -- groups -------------------------------------------------------------------------------------
def test_group_closure_separates_required_and_implied():
    group = UNIVERSE.group(["visit", "detector"])
    assert group.required == ("instrument", "detector", "visit")
    assert set(group.implied) == {"physical_filter", "band", "day_obs"}
    assert set(group.names) == set(group.required) | set(group.implied)
    assert "band" in group and "visit" in group and "tract" not in group
    assert len(group) == 6
    patch = UNIVERSE.group(["patch"])
    assert patch.required == ("skymap", "tract", "patch")
    assert patch.implied == ()


def test_groups_are_interned_and_order_independent():
    a = UNIVERSE.group(["visit", "detector"])
    b = UNIVERSE.group(("detector", "visit", "instrument"))
    assert a is b
    assert a == b and hash(a) == hash(b)
    assert UNIVERSE.group(["visit"]) != a
    assert UNIVERSE.empty.required == () and len(UNIVERSE.empty) == 0


def test_group_of_unknown_dimension_is_a_key_error_listing_known():
    with pytest.raises(KeyError, match="unknown dimension 'ccd'.*detector"):
        UNIVERSE.group(["visit", "ccd"])
    with pytest.raises(KeyError, match="visit_detector_region"):
        UNIVERSE.group(["visit_detector_region"])  # an element, but not a dimension


def test_group_pickles_to_the_interned_object():
    group = UNIVERSE.group(["visit", "detector"])
    assert pickle.loads(pickle.dumps(group)) is group
    assert cloudpickle.loads(cloudpickle.dumps(group)) is group


def test_sort_follows_universe_order():
    assert UNIVERSE.sort(["visit", "detector", "instrument", "band"]) == ("instrument", "band", "detector", "visit")


# -- data coordinates -----------------------------------------------------------------------------
VISIT_DETECTOR = UNIVERSE.group(["visit", "detector"])


def test_standardize_from_mapping_and_keywords():
    a = DataCoordinate.standardize({"instrument": "SimCam", "visit": 12}, VISIT_DETECTOR, detector=3)
    b = DataCoordinate.standardize(None, VISIT_DETECTOR, instrument="SimCam", visit=12, detector=3)
    assert a == b and hash(a) == hash(b)
    assert a.values == ("SimCam", 3, 12)  # required values in universe order
    assert a["visit"] == 12 and a["detector"] == 3 and a["instrument"] == "SimCam"
    assert list(a) == ["instrument", "detector", "visit"]
    assert len(a) == 3
    assert a.to_dict() == {"instrument": "SimCam", "detector": 3, "visit": 12}
    assert a.required_dict() == a.to_dict()
    assert a == {"instrument": "SimCam", "visit": 12, "detector": 3}
    assert a != {"instrument": "SimCam", "visit": 12, "detector": 4}
    assert a != {"instrument": "SimCam", "visit": 12}


def test_standardize_converts_integer_strings_and_numpy_ints():
    import numpy as np

    a = DataCoordinate.standardize({"instrument": "SimCam", "visit": "12", "detector": np.int64(3)}, VISIT_DETECTOR)
    assert a.values == ("SimCam", 3, 12)
    assert type(a["visit"]) is int and type(a["detector"]) is int


def test_standardize_is_idempotent_on_data_coordinates():
    a = DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, "detector": 3}, VISIT_DETECTOR)
    assert DataCoordinate.standardize(a, VISIT_DETECTOR) is a
    visit_only = DataCoordinate.standardize(a, UNIVERSE.group(["visit"]), extra_allowed=True)
    assert visit_only.to_dict() == {"instrument": "SimCam", "visit": 12}


def test_aliases_are_rewritten():
    for alias in ("ccd", "ccdnum", "sensor"):
        coord = DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, alias: 5}, VISIT_DETECTOR,
                                           aliases=SIMCAM_ALIASES)
        assert coord["detector"] == 5
        assert alias not in coord


def test_alias_and_target_with_different_values_is_an_error():
    with pytest.raises(DataIdError, match=r"ccd=5.*detector=6.*alias"):
        DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, "ccd": 5, "detector": 6},
                                   VISIT_DETECTOR, aliases=SIMCAM_ALIASES)
    same = DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, "ccd": 5, "detector": 5},
                                      VISIT_DETECTOR, aliases=SIMCAM_ALIASES)
    assert same["detector"] == 5


def test_missing_key_message_names_only_the_missing_key_and_the_aliases():
    with pytest.raises(DataIdError) as info:
        DataCoordinate.standardize({"instrument": "SimCam", "visit": 12}, VISIT_DETECTOR, aliases=SIMCAM_ALIASES)
    message = str(info.value)
    assert "is missing 'detector';" in message
    assert "'instrument'" not in message.split("is missing", 1)[1].split(";")[0]
    assert "ccd" in message and "sensor" in message  # the aliases a user may give instead


def test_unknown_key_message_lists_accepted_keys():
    with pytest.raises(DataIdError) as info:
        DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, "detector": 1, "chip": 2},
                                   VISIT_DETECTOR, aliases=SIMCAM_ALIASES)
    message = str(info.value)
    assert "'chip'" in message
    assert "accepted keys" in message and "detector" in message and "ccdnum" in message


def test_implied_values_are_kept_but_not_compared():
    with_band = DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, "detector": 1, "band": "r"},
                                           VISIT_DETECTOR)
    without = DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, "detector": 1}, VISIT_DETECTOR)
    assert with_band["band"] == "r"
    assert "band" in with_band and "band" not in without
    assert with_band == without and hash(with_band) == hash(without)
    assert not without.has_implied
    assert with_band.to_dict(implied=True)["band"] == "r"
    assert "band" not in with_band.to_dict()


@pytest.mark.parametrize("value, kind", [
    ("twelve", "int"), ("1.5", "int"), (12.5, "int"), (True, "int"), (None, "int"), ([12], "int"),
    (12, "str"), (None, "str"), (b"SimCam", "str"),
])
def test_wrong_value_type_is_a_data_id_error(value, kind):
    with pytest.raises(DataIdError, match="must be an integer" if kind == "int" else "must be a string"):
        coerce_value("visit" if kind == "int" else "instrument", kind, value)


@pytest.mark.parametrize("value", ["--12", "\u00b2", "1-2", "-", "0x10"])
def test_malformed_integer_string_is_a_data_id_error(value):
    # "--12" and "\u00b2" (superscript two) pass a naive isdigit() check; they must still be a
    # DataIdError naming the key, not a bare ValueError from int().
    with pytest.raises(DataIdError, match="visit must be an integer"):
        coerce_value("visit", "int", value)


@pytest.mark.parametrize("value", ["a/b", "/etc", "..", "a..b", "../x", "x/../y", "", " x", "x y", "a\\b",
                                   "x\n", "-x", ".hidden", "Sim\x00Cam", "é"])
def test_path_unsafe_string_values_are_rejected(value):
    with pytest.raises(DataIdError, match="invalid value"):
        validate_path_value("instrument", value)
    with pytest.raises(DataIdError):
        DataCoordinate.standardize({"instrument": value, "visit": 1, "detector": 1}, VISIT_DETECTOR)


@pytest.mark.parametrize("value", ["SimCam", "HSC", "LSSTCam-imSim", "a.b", "u_1", "x:y@z=1,2+3"])
def test_path_safe_string_values_are_kept(value):
    assert validate_path_value("instrument", value) == value


def test_data_coordinate_is_immutable():
    coord = DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, "detector": 3}, VISIT_DETECTOR)
    with pytest.raises((AttributeError, TypeError)):
        coord.values = ("SimCam", 4, 12)  # type: ignore[misc]
    assert coord.values == ("SimCam", 3, 12)
    with pytest.raises(TypeError):
        coord["visit"] = 13  # type: ignore[index]


def test_subset_to_smaller_group():
    coord = DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, "detector": 3, "band": "r"},
                                       VISIT_DETECTOR)
    visit = coord.subset(UNIVERSE.group(["visit"]))
    assert visit.to_dict() == {"instrument": "SimCam", "visit": 12}
    assert visit.implied_values == {"band": "r"}
    band = coord.subset(UNIVERSE.group(["band"]))
    assert band.to_dict() == {"band": "r"}
    with pytest.raises(DataIdError, match="physical_filter"):
        coord.subset(UNIVERSE.group(["physical_filter"]))


def test_data_coordinate_repr_is_readable():
    coord = DataCoordinate.standardize({"instrument": "SimCam", "visit": 12, "detector": 3}, VISIT_DETECTOR)
    assert repr(coord) == "{instrument: 'SimCam', detector: 3, visit: 12}"


def test_data_id_error_is_a_value_error_and_a_butler_error():
    assert issubclass(DataIdError, ValueError) and issubclass(DataIdError, ButlerError)


# -- property tests: standardisation and pickling round trips ----------------------------------------
SAFE_STR = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_+\-:@=,]{0,15}", fullmatch=True)
INT = st.integers(min_value=0, max_value=2**62)
GROUPS = [
    UNIVERSE.group(["visit", "detector"]),
    UNIVERSE.group(["exposure", "detector"]),
    UNIVERSE.group(["physical_filter"]),
    UNIVERSE.group(["band"]),
    UNIVERSE.group(["patch", "band"]),
    UNIVERSE.group(["tract"]),
    UNIVERSE.group(["instrument", "day_obs"]),
    UNIVERSE.group(["flavor", "tract"]),
    UNIVERSE.group([]),
]


def _value_strategy(name: str) -> st.SearchStrategy:
    return INT if UNIVERSE[name].key.type == "int" else SAFE_STR


@st.composite
def data_ids(draw, groups=tuple(GROUPS)):
    group: DimensionGroup = draw(st.sampled_from(groups))
    values = {name: draw(_value_strategy(name)) for name in group.required}
    return group, values


@st.composite
def user_spellings(draw):
    """A data ID plus a user's way of spelling it: int values as strings, detector via an alias."""
    group, values = draw(data_ids())
    spelled = {}
    for name, value in values.items():
        if isinstance(value, int) and draw(st.booleans()):
            value = str(value)
        if name == "detector":
            name = draw(st.sampled_from(["detector", "ccd", "ccdnum", "sensor"]))
        spelled[name] = value
    return group, values, spelled


@PROPERTY
@given(user_spellings())
def test_standardize_round_trip(case):
    group, values, spelled = case
    coord = DataCoordinate.standardize(spelled, group, aliases=SIMCAM_ALIASES)
    assert coord.to_dict() == values
    assert coord == values
    again = DataCoordinate.standardize(coord.to_dict(), group)
    assert again == coord and hash(again) == hash(coord)
    # Keyword spelling gives the same data ID.
    assert DataCoordinate.standardize(None, group, aliases=SIMCAM_ALIASES, **spelled) == coord


@PROPERTY
@given(data_ids(), st.sampled_from([pickle, cloudpickle]))
def test_data_coordinate_pickle_round_trip(case, module):
    group, values = case
    coord = DataCoordinate.standardize(values, group)
    data = module.dumps(coord)
    back = module.loads(data)
    assert back == coord and hash(back) == hash(coord)
    assert back.group is group
    assert back.to_dict() == values
    assert len(pickle.dumps(coord)) <= 300


@PROPERTY
@given(st.text(max_size=20))
def test_accepted_string_values_can_never_escape_a_path(text):
    try:
        value = validate_path_value("instrument", text)
    except DataIdError:
        return
    assert value == text
    assert "/" not in value and "\\" not in value and ".." not in value
    assert value.strip() == value and value not in ("", ".")
    assert value.isprintable()


@PROPERTY
@given(st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=True), st.booleans(), st.none()))
def test_integer_coercion_returns_an_int_or_raises_data_id_error(value):
    try:
        result = coerce_value("visit", "int", value)
    except DataIdError:
        return
    assert type(result) is int
    if isinstance(value, str):
        assert int(value) == result
    else:
        assert result == value
