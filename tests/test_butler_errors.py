"""Bad input, on every registry backend: each gets a specific exception with a message a person
can act on, and leaves the repository exactly as it was (registry rows and files).

The repository is built once per backend: every test here proves it does not change it.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager

import numpy as np
import pytest

from butler import Butler, DatasetType
from butler.errors import (
    ButlerError,
    ConflictError,
    DataIdError,
    DatasetNotFoundError,
    DatasetTypeError,
    ExpressionError,
    RegistryConnectionError,
    RepositoryNotFoundError,
    StorageClassError,
)
from butler.testing import BACKENDS, RepoFactory, backend_url, snapshot_repo

RUN = "u/tester/run1"
DATA_ID = {"instrument": "SimCam", "visit": 12, "detector": 3}


@pytest.fixture(scope="module", params=BACKENDS)
def repo(request, tmp_path_factory):
    """SimCam, visits 12 and 14, types 'metrics' (StructuredData) and 'image' (NumpyArray), one dataset."""
    backend = request.param
    if backend != "sqlite" and backend_url(backend) is None:
        pytest.skip(f"{backend} backend not configured")
    from butler.instrument import SimCam

    factory = RepoFactory(str(tmp_path_factory.mktemp(f"errors-{backend}")), backend)
    try:
        butler = Butler(factory().root, run=RUN)
        butler.register_instrument(SimCam(), calibs=False)
        butler.insert_dimension_records("visit", [
            {"instrument": "SimCam", "id": 12, "physical_filter": "SimCam-r", "day_obs": 20261124,
             "exposure_time": 30.0, "begin": "2026-11-24T03:00:00", "end": "2026-11-24T03:00:30"},
            {"instrument": "SimCam", "id": 14, "physical_filter": "SimCam-g", "day_obs": 20261124,
             "exposure_time": 5.0},
        ])
        butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
        butler.register_dataset_type(DatasetType("image", ("instrument", "visit", "detector"), "NumpyArray"))
        butler.put({"original": True}, "metrics", DATA_ID)
        yield butler
    finally:
        factory.cleanup()


@contextmanager
def unchanged(butler: Butler):
    """Assert the block leaves every registry row and every file as it was."""
    before = snapshot_repo(butler)
    yield
    after = snapshot_repo(butler)
    assert after[1] == before[1], "files changed"
    for table in sorted(set(before[0]) | set(after[0])):
        assert after[0].get(table) == before[0].get(table), f"registry table {table!r} changed"


def expect(exc: type[BaseException], pattern: str, call, case: object) -> BaseException:
    """Call ``call``; it must raise ``exc`` with a message matching ``pattern`` (``case`` names it)."""
    try:
        call()
    except exc as err:
        assert re.search(pattern, str(err)), f"{case!r}: message {str(err)!r} does not match {pattern!r}"
        return err
    except Exception as err:
        raise AssertionError(f"{case!r}: expected {exc.__name__}, got {type(err).__name__}: {err}") from err
    raise AssertionError(f"{case!r}: did not raise {exc.__name__}")


# -- data IDs ---------------------------------------------------------------------------------------
def test_unknown_data_id_key(repo):
    with unchanged(repo):
        with pytest.raises(DataIdError) as info:
            repo.put({"a": 1}, "metrics", instrument="SimCam", visit=12, detector=4, chip=4)
        message = str(info.value)
        assert "'chip'" in message and "accepted keys" in message
        assert "detector" in message and "ccd" in message  # the valid keys, aliases included
        with pytest.raises(DataIdError, match="'chip'"):
            repo.get("metrics", instrument="SimCam", visit=12, detector=3, chip=4)
        with pytest.raises(DataIdError, match=r"unknown data ID key 'chip'.*aliases \['ccd', 'ccdnum'"):
            repo.query_datasets("metrics", chip=4)


def test_unknown_alias_in_place_of_a_required_key(repo):
    with unchanged(repo):
        with pytest.raises(DataIdError) as info:
            repo.put({"a": 1}, "metrics", instrument="SimCam", visit=12, chip=4)
        message = str(info.value)
        assert "chip" in message
        assert "is missing 'detector';" in message  # only the key that is really missing
        assert "ccd, ccdnum, sensor" in message  # what may be given instead


def test_wrong_value_type(repo):
    with unchanged(repo):
        with pytest.raises(DataIdError, match="visit must be an integer, got the string 'twelve'"):
            repo.put({"a": 1}, "metrics", instrument="SimCam", visit="twelve", detector=4)
        with pytest.raises(DataIdError, match="visit must be an integer, got 12.5"):
            repo.put({"a": 1}, "metrics", instrument="SimCam", visit=12.5, detector=4)
        with pytest.raises(DataIdError, match="detector must be an integer, got the boolean True"):
            repo.get("metrics", instrument="SimCam", visit=12, detector=True)
        with pytest.raises(DataIdError, match="instrument must be a string, got 7"):
            repo.put({"a": 1}, "metrics", instrument=7, visit=12, detector=4)
        with pytest.raises(DataIdError, match="visit must be an integer"):
            repo.query_datasets("metrics", visit="12; DROP TABLE dataset")


def test_missing_required_key(repo):
    with unchanged(repo):
        with pytest.raises(DataIdError, match=r"is missing 'visit'; required keys are \['instrument', 'detector', "
                                              r"'visit'\]"):
            repo.put({"a": 1}, "metrics", instrument="SimCam", detector=4)
        with pytest.raises(DataIdError, match="missing 'visit'"):
            repo.get("metrics", instrument="SimCam", detector=3)


def test_data_id_value_not_in_registry(repo):
    with unchanged(repo):
        with pytest.raises(DataIdError, match=r"visit 13 does not exist for instrument='SimCam'; closest existing: "
                                              r"\[12, 14\]"):
            repo.put({"a": 1}, "metrics", instrument="SimCam", visit=13, detector=4)
        with pytest.raises(DataIdError, match="detector 30 does not exist"):
            repo.put({"a": 1}, "metrics", instrument="SimCam", visit=12, detector=30)
        with pytest.raises(DataIdError, match="instrument 'SimKam' does not exist; closest existing: \\['SimCam'\\]"):
            repo.put({"a": 1}, "metrics", instrument="SimKam", visit=12, detector=4)
        with pytest.raises(DatasetNotFoundError, match="detector 30 does not exist"):
            repo.get("metrics", instrument="SimCam", visit=12, detector=30)


PATH_VALUES = ["Sim/Cam", "../SimCam", "..", "a/../../b", "/etc/passwd", "Sim\\Cam", "SimCam/..", "Sim Cam",
               "SimCam\x00", ".", "~root"]


def test_path_traversal_in_data_id_values(repo):
    with unchanged(repo):
        for value in PATH_VALUES:
            expect(DataIdError, "invalid value",
                   lambda value=value: repo.put({"a": 1}, "metrics", instrument=value, visit=12, detector=4), value)
            expect(DataIdError, "invalid value",
                   lambda value=value: repo.get("metrics", instrument=value, visit=12, detector=3), value)
            expect(DataIdError, "invalid value", lambda value=value: repo.insert_dimension_records("instrument", [{
                "name": value, "class_name": "x", "visit_max": 1, "exposure_max": 1, "detector_max": 1,
                "definition_digest": "0"}]), value)
    parent = os.path.dirname(repo.root)
    assert sorted(os.listdir(parent)) == ["repo"]


# -- dataset types and storage classes ------------------------------------------------------------------
def test_unknown_dataset_type_has_a_close_match_hint(repo):
    with unchanged(repo):
        for call in (lambda: repo.put({"a": 1}, "metric", DATA_ID),
                     lambda: repo.get("metric", DATA_ID),
                     lambda: repo.exists("metric", DATA_ID),
                     lambda: repo.query_datasets("metric"),
                     lambda: repo.get_dataset_type("Metrics")):
            with pytest.raises(DatasetTypeError, match="is not registered; did you mean 'metrics'") as info:
                call()
            assert isinstance(info.value, LookupError)
        with pytest.raises(DatasetTypeError, match=r"'zzz' is not registered; registered: \['image', 'metrics'\]"):
            repo.get("zzz", DATA_ID)


def test_dataset_type_redefinition_is_a_conflict(repo):
    with unchanged(repo):
        with pytest.raises(ConflictError, match="storage class 'StructuredData' != 'NumpyArray'"):
            repo.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "NumpyArray"))
        with pytest.raises(ConflictError, match="dimensions"):
            repo.register_dataset_type(DatasetType("metrics", ("instrument", "visit"), "StructuredData"))
        with pytest.raises(StorageClassError, match="unknown storage class 'NoSuchClass'"):
            repo.register_dataset_type(DatasetType("new", ("instrument", "visit"), "NoSuchClass"))
        with pytest.raises(DatasetTypeError, match="unknown dimension 'ccd'"):
            repo.register_dataset_type(DatasetType("new", ("instrument", "visit", "ccd"), "StructuredData"))
        with pytest.raises(DatasetTypeError, match="invalid dataset type name"):
            DatasetType("bad name", ("instrument",), "StructuredData")
        # Re-registering the same definition is fine and changes nothing.
        assert repo.register_dataset_type(
            DatasetType("metrics", ("instrument", "detector", "visit"), "StructuredData")) is False


STORAGE_MISMATCHES = [
    ([1, 2, 3], "image", r"'image' storage class 'NumpyArray' expects numpy.ndarray, got list"),
    ({"a": 1}, "image", "expects numpy.ndarray, got dict"),
    (np.zeros(3), "metrics", r"'metrics' storage class 'StructuredData' expects dict or list, got numpy.ndarray"),
    ("text", "metrics", "got str"),
    (None, "metrics", "got NoneType"),
]


def test_storage_class_mismatch(repo):
    with unchanged(repo):
        for obj, dataset_type, pattern in STORAGE_MISMATCHES:
            err = expect(StorageClassError, pattern,
                         lambda obj=obj, dataset_type=dataset_type: repo.put(obj, dataset_type, instrument="SimCam",
                                                                             visit=14, detector=0), pattern)
            assert isinstance(err, TypeError)


def test_unknown_component_and_read_parameters(repo):
    with unchanged(repo):
        with pytest.raises(StorageClassError, match="no component 'wcs'"):
            repo.get("metrics", DATA_ID, component="wcs")
        with pytest.raises(ButlerError, match="component"):
            repo.put({"a": 1}, "metrics.wcs", DATA_ID)


# -- duplicates and definitions ----------------------------------------------------------------------
def test_second_put_of_same_data_id_is_a_conflict(repo):
    with unchanged(repo):
        with pytest.raises(ConflictError, match=r"'metrics' with data ID \{instrument: 'SimCam', detector: 3, "
                                                r"visit: 12\} already exists in run 'u/tester/run1'.*replace=True"):
            repo.put({"original": False}, "metrics", DATA_ID)
        with pytest.raises(ConflictError, match="already exists"):
            repo.put({"original": False}, "metrics", instrument="SimCam", visit="12", ccd=3)
    assert repo.get("metrics", DATA_ID) == {"original": True}


def test_dimension_record_referring_to_a_missing_physical_filter(simcam_repo):
    # A function-scoped repository: if the bad record got in, it must not leak into other tests.
    repo = simcam_repo
    with unchanged(repo):
        with pytest.raises(DataIdError, match="physical_filter 'SimCam-q' does not exist") as info:
            repo.insert_dimension_records("visit", [{"instrument": "SimCam", "id": 99, "physical_filter": "SimCam-q",
                                                     "day_obs": 20261124}])
        assert "SimCam-r" in str(info.value)  # the closest existing ones
        with pytest.raises(DataIdError, match="physical_filter 'nope' does not exist"):
            repo.insert_dimension_records("exposure", [{"instrument": "SimCam", "id": 5, "physical_filter": "nope",
                                                        "day_obs": 20261124}])
    # No physical_filter without a band was made up on the way.
    assert [r.name for r in repo.query_dimension_records("physical_filter", where="band IS NULL")] == []


def test_dimension_record_referring_to_a_missing_instrument(simcam_repo):
    repo = simcam_repo
    with unchanged(repo):
        with pytest.raises(DataIdError, match="instrument 'NoCam' does not exist; closest existing: \\['SimCam'\\]"):
            repo.insert_dimension_records("visit", [{"instrument": "NoCam", "id": 1, "physical_filter": "SimCam-r",
                                                     "day_obs": 20261124}])
        with pytest.raises(DataIdError, match="instrument 'NoCam' does not exist"):
            repo.insert_dimension_records("detector", [{"instrument": "NoCam", "id": 1, "full_name": "X",
                                                        "purpose": "SCIENCE"}])


def test_dimension_record_conflicts_and_bad_fields(repo):
    with unchanged(repo):
        with pytest.raises(ConflictError, match=r"a visit record with \{'instrument': 'SimCam', 'id': 12\} already "
                                                r"exists; pass conflict='replace'"):
            repo.insert_dimension_records("visit", [{"instrument": "SimCam", "id": 12,
                                                     "physical_filter": "SimCam-r", "day_obs": 20261124}])
        with pytest.raises(ConflictError, match="duplicate"):
            repo.insert_dimension_records("visit", [
                {"instrument": "SimCam", "id": 97, "physical_filter": "SimCam-r", "day_obs": 20261124},
                {"instrument": "SimCam", "id": 97, "physical_filter": "SimCam-g", "day_obs": 20261124},
            ])
        with pytest.raises(DataIdError, match="unknown field.*'exposure_tim'"):
            repo.insert_dimension_records("visit", [{"instrument": "SimCam", "id": 98, "physical_filter": "SimCam-r",
                                                     "day_obs": 20261124, "exposure_tim": 3.0}])
        with pytest.raises(DataIdError, match="missing required field 'purpose'"):
            repo.insert_dimension_records("detector", [{"instrument": "SimCam", "id": 12, "full_name": "X"}])
        with pytest.raises(DataIdError, match="unknown dimension element 'visits'; did you mean 'visit'"):
            repo.insert_dimension_records("visits", [{"instrument": "SimCam", "id": 98}])
        with pytest.raises(ValueError, match="conflict must be"):
            repo.insert_dimension_records("visit", [], conflict="overwrite")


def test_integer_values_out_of_range(repo):
    huge = 2**70
    with unchanged(repo):
        for what, call in (
            ("put", lambda: repo.put({"a": 1}, "metrics", instrument="SimCam", visit=huge, detector=1)),
            ("get", lambda: repo.get("metrics", instrument="SimCam", visit=huge, detector=1)),
            ("query_datasets", lambda: repo.query_datasets("metrics", visit=huge)),
            ("query_data_ids", lambda: repo.query_data_ids(["visit"], visit=str(huge))),
            ("insert", lambda: repo.insert_dimension_records("visit", [
                {"instrument": "SimCam", "id": huge, "physical_filter": "SimCam-r", "day_obs": 20261124}])),
        ):
            expect(DataIdError, "visit.*(range|64-bit)", call, what)
        expect(ExpressionError, "out of range", lambda: repo.query_datasets("metrics", where=f"visit = {huge}"),
               "where")


def test_record_string_longer_than_its_column(repo):
    # SQLite would store it, PostgreSQL and MySQL refuse it: the butler must refuse it the same way everywhere.
    base = {"instrument": "SimCam", "id": 77, "physical_filter": "SimCam-r", "day_obs": 20261124}
    with unchanged(repo):
        expect(DataIdError, "name.*64", lambda: repo.insert_dimension_records("visit", [{**base, "name": "x" * 100}]),
               "string longer than its column")


def test_record_field_values_are_validated(repo):
    base = {"instrument": "SimCam", "id": 77, "physical_filter": "SimCam-r", "day_obs": 20261124}
    with unchanged(repo):
        expect(DataIdError, "exposure_time must be a number",
               lambda: repo.insert_dimension_records("visit", [{**base, "exposure_time": "fast"}]), "str as float")
        expect(DataIdError, "visit.begin: cannot convert 'yesterday' to a time",
               lambda: repo.insert_dimension_records("visit", [{**base, "begin": "yesterday"}]), "bad time")
        expect(DataIdError, "visit.seeing must be a number",
               lambda: repo.insert_dimension_records("visit", [{**base, "seeing": True}]), "bool as float")
        expect(DataIdError, "exposure_time",
               lambda: repo.insert_dimension_records("visit", [{**base, "exposure_time": [30.0]}]), "list as float")


def test_instrument_reregistration_with_a_different_definition(simcam_repo):
    repo = simcam_repo
    from butler.instrument import SimCam

    definition = SimCam().definition()
    definition["filters"] = [*definition["filters"], {"name": "SimCam-N", "band": "N708"}]
    changed = SimCam.from_definition(definition)
    with unchanged(repo):
        with pytest.raises(ConflictError, match="'SimCam' is already registered with a different definition.*"
                                                "update=True"):
            repo.register_instrument(changed)
        repo.register_instrument(SimCam())  # the same definition again is a no-op


# -- where-expressions -------------------------------------------------------------------------------
BAD_WHERE = [
    ("visit > AND band = 'r'", 9, "AND"),
    ("visitt > 3", 1, "unknown dimension 'visitt'"),
    ("visit.exposure_tim > 3", 1, "visit has no field 'exposure_tim'"),
    ("visit = 12 AND (detector = 1", 29, "end of"),
    ("visit IN (1..)", 14, "integer after '..'"),
    ("band = 'r", 8, "quote|string"),
    ("visit = 'twelve'", 9, "twelve|int"),
    ("visit = 12; DROP TABLE dataset", 11, "';'"),
    ("visit.begin > T'not a time'", 15, "time"),
]


def test_malformed_where_is_an_expression_error_with_column(repo):
    with unchanged(repo):
        for where, column, pattern in BAD_WHERE:
            err = expect(ExpressionError, pattern, lambda where=where: repo.query_datasets("metrics", where=where),
                         where)
            message = str(err)
            assert isinstance(err, ValueError)
            assert f"column {column}" in message, message
            # The expression is shown with a caret under the bad token.
            lines = message.splitlines()
            assert lines[-2].strip() == where and lines[-1].strip() == "^", message
            assert lines[-1].index("^") - lines[-2].index(where) == column - 1, message
            expect(ExpressionError, pattern, lambda where=where: repo.query_data_ids(["visit"], where=where), where)


# -- SQL injection -----------------------------------------------------------------------------------
INJECTIONS = [
    "x' OR '1'='1",
    "SimCam' OR 1=1 --",
    "'; DROP TABLE dataset; --",
    "SimCam\"; DROP TABLE file_record; --",
    "1; DELETE FROM collection",
    "SimCam') OR ('a'='a",
]


def test_sql_injection_selects_nothing_and_drops_nothing(repo):
    everything = {r.id for r in repo.query_datasets("metrics")}
    with unchanged(repo):
        for payload in INJECTIONS:
            quoted = payload.replace("'", "''")
            assert repo.query_datasets("metrics", where=f"instrument = '{quoted}'") == [], payload
            assert repo.query_datasets("metrics", where="instrument = :i", bind={"i": payload}) == [], payload
            assert repo.query_datasets("metrics", where="instrument IN (:i, 'x')", bind={"i": payload}) == []
            assert repo.query_data_ids(["visit"], where="instrument = :i", bind={"i": payload}) == [], payload
            assert repo.query_dimension_records("visit", where=f"instrument = '{quoted}'") == [], payload
            expect(DataIdError, "invalid value",
                   lambda payload=payload: repo.query_datasets("metrics", instrument=payload), payload)
            expect(DataIdError, "invalid value",
                   lambda payload=payload: repo.get("metrics", instrument=payload, visit=12, detector=3), payload)
            # Pasted without escaping, the payload is either a malformed expression or a legitimate one
            # (``'x' OR '1'='1'`` is an always-true condition the user wrote); never SQL.
            try:
                refs = repo.query_datasets("metrics", where=f"instrument = '{payload}'")
            except ExpressionError:
                pass
            else:
                assert {r.id for r in refs} <= everything, payload
    assert {r.id for r in repo.query_datasets("metrics")} == everything
    assert repo.get("metrics", DATA_ID) == {"original": True}


# -- repositories and databases ------------------------------------------------------------------------
def test_repository_that_does_not_exist(tmp_path):
    missing = tmp_path / "no" / "such" / "repo"
    with pytest.raises(RepositoryNotFoundError, match="does not exist; create one with Butler.create") as info:
        Butler(missing)
    assert isinstance(info.value, FileNotFoundError)
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RepositoryNotFoundError, match="is not a butler repository: it has no butler.yaml"):
        Butler(empty)
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("url", ["postgresql+psycopg://postgres@127.0.0.1:1/test",
                                 "mysql+pymysql://root@127.0.0.1:1/test"])
def test_unreachable_database(tmp_path, url):
    root = tmp_path / "repo"
    with pytest.raises(RegistryConnectionError, match="cannot connect to the registry database") as info:
        Butler.create(root, db=url)
    assert isinstance(info.value, ConnectionError)
    assert "127.0.0.1:1" in str(info.value)
    assert not root.exists()  # nothing left behind
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(RegistryConnectionError):
        Butler.create(existing, db=url)
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


def test_repository_whose_database_became_unreachable(tmp_path):
    import yaml

    root = tmp_path / "repo"
    root.mkdir()
    (root / "butler.yaml").write_text(yaml.safe_dump({
        "registry": {"db": "postgresql+psycopg://postgres@127.0.0.1:1/test", "namespace": "x"},
        "datastore": {"templates": {}, "formatters": {}}}))
    with pytest.raises(RegistryConnectionError, match="127.0.0.1:1"):
        Butler(root)
    assert sorted(p.name for p in root.iterdir()) == ["butler.yaml"]


def test_create_over_an_existing_repository_is_a_conflict(repo):
    with unchanged(repo), pytest.raises(ConflictError, match="already holds a butler repository"):
        Butler.create(repo.root)


def test_create_where_a_deleted_repository_was(tmp_path):
    """A repository made, used and deleted by this process, then made again at the same path: the new
    one is empty (the old one's pooled connections and cached registry are forgotten)."""
    import shutil

    from butler import DatasetType

    root = tmp_path / "repo"
    old = Butler.create(root, run="u/tester/old")
    old.register_dataset_type(DatasetType("thing", (), "StructuredData"))
    old.put({"a": 1}, "thing")
    shutil.rmtree(root)
    new = Butler.create(root)
    assert new.query_collections() == [] and new.query_dataset_types() == []
    assert Butler(root).verify() == []
