"""Conformance tests of Butler queries on every registry backend.

query_datasets with where-expressions, bind parameters, data ID keywords and collection search
paths; query_data_ids; query_dimension_records; query_dataset_types; query_collections.

The repository is built once per backend (queries do not change it) to keep the suite fast.
"""

from __future__ import annotations

from datetime import UTC, datetime, timezone

import pytest

from butler import Butler, DataCoordinate, DatasetType
from butler.errors import CollectionError, DataIdError, DatasetTypeError, ExpressionError
from butler.testing import BACKENDS, RepoFactory, backend_url

RUN1, RUN2, CHAIN, BIG = "u/tester/run1", "u/tester/run2", "u/tester/chain", "u/tester/big"
VISITS = {  # id: (physical_filter, band, day_obs, exposure_time, begin)
    12: ("SimCam-r", "r", 20261124, 30.0, "2026-11-24T03:00:00"),
    14: ("SimCam-g", "g", 20261124, 5.0, "2026-11-24T04:00:00"),
    16: ("SimCam-r", "r", 20261125, 15.0, "2026-11-25T03:00:00"),
    18: ("SimCam-i", "i", 20261125, 60.0, "2026-11-25T05:00:00"),
}
BIG_VISITS = range(1000, 1056)  # 56 visits x 9 detectors = 504 datasets
DETECTORS = range(9)


@pytest.fixture(scope="module", params=BACKENDS)
def query_repo(request, tmp_path_factory):
    """A repository with SimCam, 4 + 56 visits, two runs, a chain and 504 'big' datasets."""
    backend = request.param
    if backend != "sqlite" and backend_url(backend) is None:
        pytest.skip(f"{backend} backend not configured")
    from butler.instrument import SimCam

    factory = RepoFactory(str(tmp_path_factory.mktemp(f"queries-{backend}")), backend)
    try:
        butler = Butler(factory().root, writeable=True)
        butler.register_instrument(SimCam(), calibs=False)
        records = [
            {"instrument": "SimCam", "id": v, "physical_filter": pf, "day_obs": day, "exposure_time": t,
             "begin": begin, "end": begin[:-2] + "30"}
            for v, (pf, _, day, t, begin) in VISITS.items()
        ]
        records += [{"instrument": "SimCam", "id": v, "physical_filter": "SimCam-z", "day_obs": 20261201,
                     "exposure_time": 1.0} for v in BIG_VISITS]
        butler.insert_dimension_records("visit", records)
        for name, dims in (("metrics", ("instrument", "visit", "detector")), ("counts", ("instrument", "visit")),
                           ("big", ("instrument", "visit", "detector"))):
            butler.register_dataset_type(DatasetType(name, dims, "StructuredData"))
        butler.put_many([({"run": 1, "visit": v, "detector": d}, "metrics",
                          {"instrument": "SimCam", "visit": v, "detector": d}) for v in VISITS for d in DETECTORS],
                        run=RUN1)
        butler.put_many([({"n": v}, "counts", {"instrument": "SimCam", "visit": v}) for v in (12, 14)], run=RUN1)
        butler.put_many([({"run": 2, "visit": 12, "detector": d}, "metrics",
                          {"instrument": "SimCam", "visit": 12, "detector": d}) for d in range(3)], run=RUN2)
        butler.set_chain(CHAIN, [RUN2, RUN1])
        big_refs = butler.put_many([({"v": v, "d": d}, "big", {"instrument": "SimCam", "visit": v, "detector": d})
                                    for v in BIG_VISITS for d in DETECTORS], run=BIG)
        butler.big_refs = big_refs  # type: ignore[attr-defined]
        yield butler
    finally:
        factory.cleanup()


def _keys(refs) -> list[tuple[int, int]]:
    return sorted((r.data_id["visit"], r.data_id["detector"]) for r in refs)


def _all(visits, detectors=DETECTORS) -> list[tuple[int, int]]:
    return sorted((v, d) for v in visits for d in detectors)


# -- where-expressions --------------------------------------------------------------------------
WHERE_CASES = [
    ("visit = 14", _all([14])),
    ("visit != 14 AND detector = 0", _all([12, 16, 18], [0])),
    ("visit <> 14 AND detector = 0", _all([12, 16, 18], [0])),
    ("visit > 14", _all([16, 18])),
    ("visit >= 16 AND detector <= 1", _all([16, 18], [0, 1])),
    ("visit < 14 AND detector > 7", [(12, 8)]),
    ("visit IN (12, 16..18) AND detector IN (0..2)", _all([12, 16, 18], [0, 1, 2])),
    ("detector IN (0..8:4) AND visit = 12", _all([12], [0, 4, 8])),
    ("visit NOT IN (12, 14) AND detector = 3", _all([16, 18], [3])),
    ("band = 'r'", _all([12, 16])),
    ("band = 'r' AND visit > 12", _all([16])),
    ("physical_filter = 'SimCam-i'", _all([18])),
    ("band IN ('g', 'i') AND detector = 5", _all([14, 18], [5])),
    ("NOT (band = 'r') AND detector = 0", _all([14, 18], [0])),
    ("NOT band = 'r' AND detector = 0", _all([14, 18], [0])),
    ("(visit = 12 OR visit = 18) AND NOT detector > 0", _all([12, 18], [0])),
    ("visit = 12 AND detector = 1 OR visit = 14 AND detector = 2", [(12, 1), (14, 2)]),
    ("visit = 12 and detector in (1, 2)", [(12, 1), (12, 2)]),
    ("visit.exposure_time > 10 AND detector = 0", _all([12, 16, 18], [0])),
    ("visit.exposure_time < 10.0 AND detector = 0", _all([14], [0])),
    ("visit.exposure_time >= 15 AND visit.exposure_time <= 30 AND detector = 0", _all([12, 16], [0])),
    ("visit.begin >= T'2026-11-25T00:00:00' AND detector = 0", _all([16, 18], [0])),
    ("visit.begin < T'2026-11-24T03:30:00' AND detector = 0", _all([12], [0])),
    ("visit.begin > T'2026-11-24 03:30:00Z' AND visit.begin < T'2026-11-25T04:00:00' AND detector = 0",
     _all([14, 16], [0])),
    ("day_obs = 20261125 AND detector = 0", _all([16, 18], [0])),
    ("instrument = 'SimCam' AND detector = 8 AND visit <= 14", _all([12, 14], [8])),
    ("detector.full_name = 'S22' AND visit < 16", _all([12, 14], [8])),
    ("detector.purpose = 'SCIENCE' AND visit = 12 AND detector < 2", _all([12], [0, 1])),
    ("visit.name IS NULL AND detector = 0", _all(VISITS, [0])),
    ("visit.exposure_time IS NOT NULL AND detector = 0", _all(VISITS, [0])),
    ("instrument = 'NoCam'", []),
    ("visit > 100", []),
]


@pytest.mark.parametrize("where, expected", WHERE_CASES, ids=[c[0] for c in WHERE_CASES])
def test_query_datasets_where(query_repo, where, expected):
    refs = query_repo.query_datasets("metrics", collections=RUN1, where=where)
    assert _keys(refs) == expected
    assert all(r.run == RUN1 and r.dataset_type.name == "metrics" for r in refs)
    assert len({r.id for r in refs}) == len(refs)


def test_query_datasets_without_where_returns_everything(query_repo):
    refs = query_repo.query_datasets("metrics", collections=RUN1)
    assert _keys(refs) == _all(VISITS)
    # Refs from a query are the refs of the datasets: the values read back belong to them.
    for ref in refs[:5]:
        assert query_repo.get(ref) == {"run": 1, "visit": ref.data_id["visit"], "detector": ref.data_id["detector"]}


def test_query_datasets_bind_parameters(query_repo):
    q = query_repo.query_datasets
    assert _keys(q("metrics", collections=RUN1, where="visit = :v AND detector IN :dets",
                   bind={"v": 14, "dets": [1, 2]})) == [(14, 1), (14, 2)]
    assert _keys(q("metrics", collections=RUN1, where="visit.exposure_time > :t AND detector = :d",
                   bind={"t": 10.0, "d": 0})) == _all([12, 16, 18], [0])
    assert _keys(q("metrics", collections=RUN1, where="band = :band AND detector = 4",
                   bind={"band": "g"})) == [(14, 4)]
    assert _keys(q("metrics", collections=RUN1, where="visit.begin > :t AND detector = 4",
                   bind={"t": datetime(2026, 11, 25, 4, 0, tzinfo=UTC)})) == [(18, 4)]
    assert _keys(q("metrics", collections=RUN1, where="visit IN (:a, :b) AND detector = 0",
                   bind={"a": 12, "b": 18})) == [(12, 0), (18, 0)]
    with pytest.raises(ExpressionError, match="missing_name"):
        q("metrics", collections=RUN1, where="visit = :missing_name")


def test_query_datasets_data_id_keywords(query_repo):
    q = query_repo.query_datasets
    assert _keys(q("metrics", collections=RUN1, visit=14, detector=3)) == [(14, 3)]
    assert _keys(q("metrics", collections=RUN1, instrument="SimCam", visit=14, ccd=3)) == [(14, 3)]
    assert _keys(q("metrics", collections=RUN1, data_id={"visit": 16})) == _all([16])
    assert _keys(q("metrics", collections=RUN1, data_id={"visit": 16}, where="detector < 2")) == [(16, 0), (16, 1)]
    assert _keys(q("metrics", collections=RUN1, band="g")) == _all([14])
    assert _keys(q("metrics", collections=RUN1, physical_filter="SimCam-r", detector="7")) == [(12, 7), (16, 7)]
    assert _keys(q("metrics", collections=RUN1, day_obs=20261125, sensor=2)) == [(16, 2), (18, 2)]


def test_collection_search_paths(query_repo):
    q = query_repo.query_datasets
    # A chain is a search path: the first collection that has a data ID wins.
    chained = q("metrics", collections=CHAIN)
    assert _keys(chained) == _all(VISITS)
    runs = {(r.data_id["visit"], r.data_id["detector"]): r.run for r in chained}
    assert {k for k, run in runs.items() if run == RUN2} == {(12, 0), (12, 1), (12, 2)}
    assert query_repo.get("metrics", instrument="SimCam", visit=12, detector=1, collections=CHAIN)["run"] == 2
    assert query_repo.get("metrics", instrument="SimCam", visit=12, detector=5, collections=CHAIN)["run"] == 1
    # An explicit list is a search path too, in the order given.
    assert {r.run for r in q("metrics", collections=[RUN1, RUN2])} == {RUN1}
    assert sorted(r.id for r in q("metrics", collections=[RUN2, RUN1])) == sorted(r.id for r in chained)
    assert query_repo.get("metrics", instrument="SimCam", visit=12, detector=1, collections=[RUN1, RUN2])["run"] == 1
    # find_first=False returns every match.
    every = q("metrics", collections=CHAIN, find_first=False)
    assert len(every) == 39 and len({r.id for r in every}) == 39
    assert sorted(r.run for r in every if r.data_id["visit"] == 12 and r.data_id["detector"] == 0) == [RUN1, RUN2]
    # A glob returns every match by default (no order to search in).
    globbed = q("metrics", collections="u/tester/run*")
    assert sorted(r.id for r in globbed) == sorted(r.id for r in every)
    assert _keys(q("metrics", collections="u/*/run2")) == _all([12], [0, 1, 2])
    # Where and search path together.
    assert {r.run for r in q("metrics", collections=CHAIN, where="visit = 12 AND detector IN (2, 3)")} == {RUN1, RUN2}
    # A Butler's default collections are used when none are given.
    reader = Butler(query_repo.root, collections=CHAIN)
    assert sorted(r.id for r in reader.query_datasets("metrics")) == sorted(r.id for r in chained)
    assert reader.get("metrics", instrument="SimCam", visit=12, detector=0)["run"] == 2


def test_unknown_collections_are_errors_with_hints(query_repo):
    with pytest.raises(CollectionError, match=r"'u/tester/rnu1' does not exist.*did you mean 'u/tester/run1'"):
        query_repo.query_datasets("metrics", collections="u/tester/rnu1")
    with pytest.raises(CollectionError, match="no collection matches the pattern 'nobody/\\*'"):
        query_repo.query_datasets("metrics", collections="nobody/*")
    with pytest.raises(CollectionError, match="no collections to search"):
        Butler(query_repo.root).query_datasets("metrics")


def test_query_datasets_unknown_type_has_close_match(query_repo):
    with pytest.raises(DatasetTypeError, match="'metric' is not registered; did you mean 'metrics'"):
        query_repo.query_datasets("metric", collections=RUN1)


def test_query_500_refs_returns_exactly_the_right_set(query_repo):
    refs = query_repo.query_datasets("big", collections=BIG,
                                     where="visit IN (1000..1054) OR (visit = 1055 AND detector < 5)")
    assert len(refs) == 500
    expected = _all(range(1000, 1055)) + _all([1055], range(5))
    assert _keys(refs) == sorted(expected)
    by_key = {(r.data_id["visit"], r.data_id["detector"]): r.id for r in query_repo.big_refs}
    assert {r.id for r in refs} == {by_key[k] for k in expected}
    assert len(query_repo.query_datasets("big", collections=BIG)) == 504
    hundred = query_repo.query_datasets("big", collections=BIG, where="visit >= 1040 AND detector IN (0..4)")
    assert _keys(hundred) == _all(range(1040, 1056), range(5))
    assert query_repo.query_datasets("big", collections=RUN1) == []


# -- data IDs ---------------------------------------------------------------------------------
def test_query_data_ids_fills_implied_values(query_repo):
    ids = query_repo.query_data_ids(["visit"], where="visit < 100", instrument="SimCam")
    assert [d["visit"] for d in ids] == sorted(VISITS)
    for d in ids:
        assert isinstance(d, DataCoordinate)
        pf, band, day, _, _ = VISITS[d["visit"]]
        assert d["physical_filter"] == pf and d["band"] == band and d["day_obs"] == day
        assert d.has_implied
        assert d == {"instrument": "SimCam", "visit": d["visit"]}


def test_query_data_ids_with_record_fields(query_repo):
    ids = query_repo.query_data_ids(["visit", "detector"],
                                    where="instrument = 'SimCam' AND visit.exposure_time > 10 AND visit < 100")
    assert sorted((d["visit"], d["detector"]) for d in ids) == _all([12, 16, 18])
    assert all(d["band"] in ("r", "i") for d in ids)
    assert query_repo.query_data_ids("detector", instrument="SimCam", where="detector.full_name = 'S11'") == [
        {"instrument": "SimCam", "detector": 4}]
    assert sorted(d["band"] for d in query_repo.query_data_ids("band")) == sorted("grizy")
    assert [d["physical_filter"] for d in query_repo.query_data_ids("physical_filter", where="band = 'i'")] == [
        "SimCam-i"]
    assert query_repo.query_data_ids(["visit"], where="visit.exposure_time > 1000") == []


def test_query_data_ids_constrained_by_datasets(query_repo):
    ids = query_repo.query_data_ids(["visit", "detector"], datasets="metrics", collections=RUN2)
    assert sorted((d["visit"], d["detector"]) for d in ids) == _all([12], [0, 1, 2])
    assert all(d["band"] == "r" for d in ids)
    visits = query_repo.query_data_ids(["visit"], datasets="counts", collections=RUN1)
    assert [d["visit"] for d in visits] == [12, 14]
    assert [d["band"] for d in visits] == ["r", "g"]
    dets = query_repo.query_data_ids(["detector"], datasets="metrics", collections=RUN2)
    assert [d["detector"] for d in dets] == [0, 1, 2]
    both = query_repo.query_data_ids(["visit", "detector"], datasets=["metrics", "counts"], collections=RUN1,
                                     where="detector = 0")
    assert sorted(d["visit"] for d in both) == [12, 14]
    with pytest.raises(DatasetTypeError, match="did you mean 'metrics'"):
        query_repo.query_data_ids(["visit"], datasets="metricz", collections=RUN1)


def test_query_data_ids_unknown_dimension(query_repo):
    with pytest.raises(DataIdError, match="unknown dimension 'ccd'"):
        query_repo.query_data_ids(["visit", "ccd"])
    with pytest.raises(DataIdError, match="unknown data ID key 'chip'"):
        query_repo.query_data_ids(["visit"], chip=1)


# -- dimension records ----------------------------------------------------------------------------
def test_query_dimension_records(query_repo):
    visits = query_repo.query_dimension_records("visit", where="visit.exposure_time > 10 AND visit < 100")
    assert [r.id for r in visits] == [12, 16, 18]
    for rec in visits:
        pf, _, day, t, begin = VISITS[rec.id]
        assert rec.physical_filter == pf and rec.day_obs == day and rec.exposure_time == t
        assert rec.begin == datetime.fromisoformat(begin).replace(tzinfo=UTC)
        assert rec.data_id == {"instrument": "SimCam", "visit": rec.id}
    detectors = query_repo.query_dimension_records("detector", instrument="SimCam")
    assert [r.id for r in detectors] == list(DETECTORS)
    assert [r.full_name for r in detectors] == [f"S{i}{j}" for i in range(3) for j in range(3)]
    (one,) = query_repo.query_dimension_records("visit", visit=14, instrument="SimCam")
    assert one.physical_filter == "SimCam-g" and one.exposure_time == 5.0
    filters = query_repo.query_dimension_records("physical_filter", where="band = 'r'")
    assert [(r.name, r.band) for r in filters] == [("SimCam-r", "r")]
    (inst,) = query_repo.query_dimension_records("instrument")
    assert inst.name == "SimCam" and inst.detector_max == 16
    with pytest.raises(DataIdError, match="unknown dimension element 'visits'"):
        query_repo.query_dimension_records("visits")


# -- dataset types and collections ------------------------------------------------------------------
def test_query_dataset_types_with_globs(query_repo):
    assert [t.name for t in query_repo.query_dataset_types("*")] == ["big", "counts", "metrics"]
    assert [t.name for t in query_repo.query_dataset_types()] == ["big", "counts", "metrics"]
    assert [t.name for t in query_repo.query_dataset_types("m*")] == ["metrics"]
    assert [t.name for t in query_repo.query_dataset_types("c?unts")] == ["counts"]
    assert [t.name for t in query_repo.query_dataset_types("[bc]*")] == ["big", "counts"]
    assert query_repo.query_dataset_types("nothing*") == []
    (metrics,) = query_repo.query_dataset_types("metrics")
    assert metrics == DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData")


def test_query_collections_with_globs(query_repo):
    assert query_repo.query_collections("u/tester/*") == sorted([RUN1, RUN2, CHAIN, BIG])
    assert query_repo.query_collections() == sorted([RUN1, RUN2, CHAIN, BIG])
    assert query_repo.query_collections("u/tester/run?") == [RUN1, RUN2]
    assert query_repo.query_collections("*", types=["CHAINED"]) == [CHAIN]
    assert query_repo.query_collections(["*/big", "*/chain"]) == [BIG, CHAIN]
    assert query_repo.query_collections("u/alice/*") == []
    assert query_repo.get_chain(CHAIN) == [RUN2, RUN1]


def test_string_comparisons_are_case_sensitive_on_every_backend(query_repo):
    # MySQL's default collation compares strings case-insensitively; data IDs must not.
    assert query_repo.query_datasets("metrics", collections=RUN1, where="band = 'R'") == []
    assert query_repo.query_datasets("metrics", collections=RUN1, where="instrument = 'simcam'") == []
    assert query_repo.query_datasets("metrics", collections=RUN1, instrument="SIMCAM") == []
    assert query_repo.find_dataset("metrics", instrument="simcam", visit=12, detector=0, collections=RUN1) is None
    assert query_repo.query_data_ids("physical_filter", where="physical_filter = 'simcam-r'") == []


def test_record_times_in_every_accepted_form(simcam_repo):
    """begin/end accept astropy Time, datetime (naive = UTC, aware converted) and ISO strings."""
    from datetime import timedelta

    from astropy.time import Time

    butler = simcam_repo
    base = {"instrument": "SimCam", "physical_filter": "SimCam-r", "day_obs": 20261126}
    expected = datetime(2026, 11, 26, 3, 0, tzinfo=UTC)
    forms = {
        30: "2026-11-26T03:00:00",
        31: "2026-11-26 03:00:00Z",
        32: "2026-11-26T05:00:00+02:00",
        33: datetime(2026, 11, 26, 3, 0),
        34: datetime(2026, 11, 25, 22, 0, tzinfo=timezone(timedelta(hours=-5))),
        35: Time("2026-11-26T03:00:00", scale="utc"),
        36: Time("2026-11-26T03:00:37", scale="tai"),  # TAI - UTC = 37 s
        37: Time(expected.timestamp(), format="unix"),
    }
    butler.insert_dimension_records("visit", [{**base, "id": v, "begin": t, "end": expected + timedelta(seconds=30)}
                                              for v, t in forms.items()])
    records = butler.query_dimension_records("visit", where="visit >= 30")
    assert {r.id: r.begin for r in records} == {v: expected for v in forms}
    assert all(r.end == expected + timedelta(seconds=30) for r in records)
    assert [r.id for r in butler.query_dimension_records(
        "visit", where="visit.begin = T'2026-11-26T03:00:00' AND visit.end > T'2026-11-26T03:00:29'")] == sorted(forms)
    assert [d["visit"] for d in butler.query_data_ids(
        "visit", where="visit.begin >= :t", bind={"t": Time("2026-11-26T03:00:00", scale="utc")})] == sorted(forms)
