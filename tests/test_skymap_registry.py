"""Skymaps in the registry (issue 4): registration, visits with regions, spatial queries both ways,
updates, packers and coadd flavors, on every registry backend."""

from __future__ import annotations

import lsst.sphgeom as sg
import numpy as np
import pytest
import sqlalchemy as sa

from butler import Butler, DatasetType
from butler.errors import ConflictError, DataIdError
from butler.flavors import FLAVOR_KINDS, default_flavors, flavor_record
from butler.instrument import SimCam
from butler.registry._spatial import RegionError, polygon_from_lonlat
from butler.skymap import DiscreteSkyMap, RingsSkyMap, SkyMapIndexError
from butler.skymap._geometry import polygons_from_vertices
from butler.testing import snapshot_repo

TRACT = 100  # a 12-ring skymap's tract near the equator (tracts are ~14 degrees, patches ~1.4)
NEIGHBOUR = 101


@pytest.fixture
def rings() -> RingsSkyMap:
    return RingsSkyMap("rings12", num_rings=12)


@pytest.fixture
def repo(repo_factory):
    butler = repo_factory()
    butler = Butler(butler.root, run="u/tester/run1")
    butler.register_instrument(SimCam(), calibs=False)
    return butler


def exposure_record(exposure: int, ra: float, dec: float, *, angle: float = 0.0, band: str = "r") -> dict:
    return {"instrument": "SimCam", "id": exposure, "physical_filter": f"SimCam-{band}", "day_obs": 20261124,
            "obs_id": f"SC_{exposure}", "exposure_time": 30.0, "begin": "2026-11-24T03:00:00",
            "end": "2026-11-24T03:00:30", "tracking_ra": ra, "tracking_dec": dec, "sky_angle": angle}


def boresights(sm: RingsSkyMap) -> list[tuple[float, float, float]]:
    """(ra, dec, sky angle) inside tract TRACT: its centre, a patch corner, a patch edge, random points."""
    tract = sm[TRACT]
    pw, ph = tract.patch_size
    out = [(*tract.center, 0.0)]
    ra, dec = tract.pixel_to_sky(5 * pw - 0.5, 5 * ph - 0.5)  # the corner shared by patches 44, 45, 54, 55
    out.append((float(ra), float(dec), 0.0))
    ra, dec = tract.pixel_to_sky(3 * pw - 0.5, 2.5 * ph)  # on the edge between patches 22 and 23
    out.append((float(ra), float(dec), 30.0))
    rng = np.random.default_rng(4)
    inner = tract.inner_bbox
    for _ in range(5):
        x = rng.uniform(inner.x_min + 5000, inner.x_max - 5000)
        y = rng.uniform(inner.y_min + 5000, inner.y_max - 5000)
        ra, dec = tract.pixel_to_sky(x, y)
        out.append((float(ra), float(dec), float(rng.uniform(0, 360))))
    return out


@pytest.fixture
def sky(repo, rings):
    """SimCam with 8 exposures -> visits 1..8 inside tract 100 of rings12 (tracts 100, 101 registered)."""
    assert repo.register_skymap(rings, tracts=[TRACT, NEIGHBOUR]) == 2
    records = []
    for i, (ra, dec, angle) in enumerate(boresights(rings), start=1):
        records.append(exposure_record(i, ra, dec, angle=angle, band="g" if i % 2 else "r"))
    repo.insert_dimension_records("exposure", records)
    assert repo.define_visits("SimCam") == len(records)
    return repo


def index_pixels(butler: Butler, element: str, **key) -> set[int]:
    table = butler.registry.schema.skypix[element]
    with butler.registry.db.transaction() as conn:
        return set(conn.execute(sa.select(table.c.pix).where(*[table.c[k] == v for k, v in key.items()])).scalars())


def detector_regions(butler: Butler) -> dict[tuple[int, int], sg.Region]:
    return {(r.visit, r.detector): r.region for r in butler.query_dimension_records("visit_detector_region",
                                                                                      instrument="SimCam")}


# -- registration --------------------------------------------------------------------------------
def test_register_selected_tracts_and_iterate_patches(repo, rings):
    assert repo.register_skymap(rings, tracts=[TRACT]) == 1
    ids = repo.query_data_ids(["patch"], skymap="rings12", tract=TRACT)
    assert [d["patch"] for d in ids] == list(range(rings.num_patches))
    assert [d["tract"] for d in repo.query_data_ids(["tract"], skymap="rings12")] == [TRACT]
    records = {r.id: r for r in repo.query_dimension_records("patch", skymap="rings12", tract=TRACT)}
    tract = rings[TRACT]
    for patch in tract:
        assert (records[patch.id].cell_x, records[patch.id].cell_y) == patch.index
        assert records[patch.id].region.encode() == patch.outer_region.encode()
    (tract_record,) = repo.query_dimension_records("tract", skymap="rings12", tract=TRACT)
    assert tract_record.region.encode() == tract.outer_region.encode()
    assert index_pixels(repo, "tract", skymap="rings12", id=TRACT) == set(
        repo.registry.records.spatial.pixels(tract.outer_region))
    assert index_pixels(repo, "patch", skymap="rings12", tract=TRACT, id=45) == set(
        repo.registry.records.spatial.pixels(tract.patch(45).outer_region))
    # More tracts later: only the missing ones are added; then nothing is left to add.
    assert repo.register_skymap(rings, tracts=[TRACT, NEIGHBOUR, NEIGHBOUR]) == 1
    before = snapshot_repo(repo)
    assert repo.register_skymap(rings, tracts=NEIGHBOUR) == 0
    assert snapshot_repo(repo) == before
    assert repo.get_skymap("rings12") == rings


def test_full_registration_is_idempotent(repo):
    sm = DiscreteSkyMap("deep3", centers=[(10.0, 0.0), (150.0, 30.0), (250.0, -60.0)], radius_deg=0.3,
                        patch_grid=(3, 3))
    assert repo.register_skymap(sm) == 3
    assert len(repo.query_data_ids(["tract", "patch"], skymap="deep3")) == 27
    before = snapshot_repo(repo)
    assert repo.register_skymap(sm) == 0
    assert repo.register_skymap(DiscreteSkyMap.from_config(sm.config), tracts=[2]) == 0
    assert snapshot_repo(repo) == before


def test_partial_then_full_registration_adds_the_rest(repo):
    sm = DiscreteSkyMap("deep4", centers=[(10.0, 0.0), (11.0, 0.0), (12.0, 0.0), (13.0, 0.0)], radius_deg=0.3,
                        patch_grid=(2, 2))
    assert repo.register_skymap(sm, tracts=[1, 3]) == 2
    assert repo.register_skymap(sm) == 2
    assert [d["tract"] for d in repo.query_data_ids(["tract"], skymap="deep4")] == [0, 1, 2, 3]
    assert len(repo.query_data_ids(["patch"], skymap="deep4")) == 16


def test_big_registrations_rebuild_the_pixel_indexes_once(repo, monkeypatch):
    """(SQLite) big loads drop the pix indexes and rebuild them in the same transaction; a failure
    in the middle leaves everything, indexes included, as it was."""
    import butler._skymaps as skymaps
    import butler.registry._skymap_records as skymap_records

    monkeypatch.setattr(skymap_records, "DEFER_INDEXES_PATCHES", 1)
    sm = DiscreteSkyMap("deep3", centers=[(10.0, 0.0), (11.0, 0.0), (12.0, 0.0)], radius_deg=0.3, patch_grid=(3, 3))

    def indexes() -> set[str]:
        with repo.registry.db.transaction() as conn:
            inspector = sa.inspect(conn)
            return {i["name"] for t in ("tract_skypix", "patch_skypix")
                    for i in inspector.get_indexes(t, schema=repo.registry.db.namespace)}

    expected = indexes()
    assert {"tract_skypix_pix", "patch_skypix_pix"} <= expected
    before = snapshot_repo(repo)
    original = skymaps._insert_tract_batch
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return original(*args)

    monkeypatch.setattr(skymaps, "BATCH_TRACTS", 1)
    monkeypatch.setattr(skymaps, "_insert_tract_batch", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        repo.register_skymap(sm)
    assert snapshot_repo(repo) == before and indexes() == expected
    monkeypatch.setattr(skymaps, "_insert_tract_batch", original)
    assert repo.register_skymap(sm) == 3
    assert indexes() == expected
    square = polygon_from_lonlat([(10.9, -0.1), (11.1, -0.1), (11.1, 0.1), (10.9, 0.1)])
    repo.insert_dimension_records("visit", [{"instrument": "SimCam", "id": 1, "physical_filter": "SimCam-r",
                                             "day_obs": 20261124, "region": square}])
    assert {d["tract"] for d in repo.query_data_ids(["tract"], instrument="SimCam", visit=1)} == {1}


def test_a_concurrent_registration_is_retried(repo, rings, monkeypatch):
    """When another process registers the same tracts between our read and our insert, the insert
    fails on a unique key (raised by the driver's cursor of the bulk insert): the transaction rolls
    back and the registration starts again from a fresh read of what is registered."""
    import butler._skymaps as skymaps

    original = skymaps._register_tracts
    dbapi = repo.registry.db.engine.dialect.loaded_dbapi
    calls = []

    def racing(registry, conn, skymap, wanted):
        calls.append(1)
        if len(calls) == 1:
            other = Butler(repo.root, writeable=True).registry
            assert original(other, conn, skymap, np.array([NEIGHBOUR])) == 1  # "the other process"
            raise dbapi.IntegrityError("UNIQUE constraint failed: tract.skymap, tract.id")
        return original(registry, conn, skymap, wanted)

    monkeypatch.setattr(skymaps, "_register_tracts", racing)
    assert repo.register_skymap(rings, tracts=[TRACT, NEIGHBOUR]) == 2  # the failed attempt was rolled back
    assert len(calls) == 2
    assert [d["tract"] for d in repo.query_data_ids(["tract"], skymap="rings12")] == [TRACT, NEIGHBOUR]


def test_a_different_config_under_the_same_name_is_a_conflict(repo, rings):
    repo.register_skymap(rings, tracts=[TRACT])
    before = snapshot_repo(repo)
    other = RingsSkyMap("rings12", num_rings=13)
    with pytest.raises(ConflictError, match=r"num_rings: 12 != 13"):
        repo.register_skymap(other)
    with pytest.raises(ConflictError, match=r"already registered with a different configuration"):
        repo.register_skymap(RingsSkyMap("rings12", num_rings=12, patch_grid=(8, 8)), tracts=[1])
    assert snapshot_repo(repo) == before


@pytest.mark.parametrize("tracts, match", [
    ([TRACT, 246], r"has no tract 246 \(tracts\[1\]\); valid tract ids are 0 to 245"),
    ([-1], r"has no tract -1"),
    (["7"], r"has no tract '7'"),
    ([], r"no tracts given"),
    ("40", r"must be an iterable of tract ids"),
])
def test_bad_tracts_are_rejected_and_nothing_is_written(repo, rings, tracts, match):
    before = snapshot_repo(repo)
    with pytest.raises(SkyMapIndexError, match=match):
        repo.register_skymap(rings, tracts=tracts)
    assert snapshot_repo(repo) == before
    assert repo.query_dimension_records("skymap") == []


def test_queries_on_a_tract_not_registered_name_the_tract(repo, rings):
    """An unregistered tract as a constraint is an error naming it, not an empty result that
    reads as "no data" (issue 11)."""
    repo.register_skymap(rings, tracts=[TRACT])
    with pytest.raises(DataIdError, match=rf"tract {NEIGHBOUR} of skymap 'rings12' .* is not registered"):
        repo.query_data_ids(["patch"], skymap="rings12", tract=NEIGHBOUR)
    assert repo.query_data_ids(["patch"], skymap="rings12", tract=TRACT, where="patch < 0") == []


# -- visits and spatial queries ------------------------------------------------------------------
def test_define_visits_regions_follow_the_camera_geometry(sky, rings):
    visits = {v.id: v for v in sky.query_dimension_records("visit", instrument="SimCam")}
    assert sorted(visits) == list(range(1, 9))
    exposures = {e.id: e for e in sky.query_dimension_records("exposure", instrument="SimCam")}
    regions = detector_regions(sky)
    assert len(regions) == 8 * 9
    for (visit, detector), region in regions.items():
        assert visits[visit].region.contains(region.getBoundingCircle().getCenter())
        assert visits[visit].tracking_ra == exposures[visit].tracking_ra
        assert visits[visit].physical_filter == exposures[visit].physical_filter
    definitions = sky.query_dimension_records("visit_definition", instrument="SimCam")
    assert sorted((d.exposure, d.visit) for d in definitions) == [(i, i) for i in range(1, 9)]
    assert sky.define_visits("SimCam") == 0  # every exposure has its visit: nothing to do


def test_define_visits_uses_the_camera_version_of_each_exposure(repo_factory):
    """A second camera version (twice the pixel scale, detector 4 rotated) certified from December:
    visits of November exposures get the first geometry, December ones the second."""
    from butler._skymaps import sky_vectors
    from butler.instrument import Camera

    butler = Butler(repo_factory().root, run="u/tester/run1")
    butler.register_instrument(SimCam())  # the first version, certified for all time
    definition = SimCam().definition()
    for det in definition["detectors"]:
        det["pixel_scale_arcsec"] *= 2
    definition["detectors"][4]["rotation_deg"] = 30.0
    butler.certify_camera(Camera.from_dict(definition), "2026-12-01")
    ra, dec, angle = 150.0, 2.0, 10.0
    butler.insert_dimension_records("exposure", [
        {**exposure_record(1, ra, dec, angle=angle), "begin": "2026-11-30T23:00:00", "end": "2026-11-30T23:00:30"},
        {**exposure_record(2, ra, dec, angle=angle), "begin": "2026-12-01T01:00:00", "end": "2026-12-01T01:00:30",
         "day_obs": 20261201},
    ])
    assert butler.define_visits("SimCam") == 2
    regions = detector_regions(butler)
    old, new = (butler.get("camera", instrument="SimCam", exposure=e) for e in (1, 2))
    assert old == Camera.from_instrument(SimCam()) and new == Camera.from_dict(definition)
    for visit, camera in ((1, old), (2, new)):
        expected = sky_vectors([ra], [dec], [angle], np.array([camera.detector_corners(d) for d in range(9)]))[0]
        for d in range(9):
            got = np.array([[v.x(), v.y(), v.z()] for v in regions[(visit, d)].getVertices()])
            # every corner of the version's geometry is a vertex of the stored region (to ~0.2 mas)
            assert np.abs(got[None, :, :] - expected[d][:, None, :]).max(axis=2).min(axis=1).max() < 1e-9, (visit, d)
    # Twice the pixel scale: each December detector spans twice the angle of its November self.
    for d in range(9):
        ratio = (regions[(2, d)].getBoundingCircle().getOpeningAngle().asRadians()
                 / regions[(1, d)].getBoundingCircle().getOpeningAngle().asRadians())
        assert ratio == pytest.approx(2.0, rel=1e-3)
    visits = {v.id: v for v in butler.query_dimension_records("visit", instrument="SimCam")}
    assert visits[2].region.getBoundingCircle().getOpeningAngle().asRadians() == pytest.approx(
        2 * visits[1].region.getBoundingCircle().getOpeningAngle().asRadians(), rel=1e-3)


def test_both_directions_agree_with_each_other_and_with_the_skymap(sky, rings):
    regions = detector_regions(sky)
    # visit+detector -> patches, compared with an exact overlap test against the skymap's patches.
    forward: dict[tuple[int, int], set[tuple[int, int]]] = {}
    candidates = [(t, p.id, p.outer_region) for t in (TRACT, NEIGHBOUR) for p in rings[t]]
    for (visit, detector), region in regions.items():
        found = {(d["tract"], d["patch"]) for d in sky.query_data_ids(["tract", "patch"], instrument="SimCam",
                                                                       visit=visit, detector=detector)}
        forward[(visit, detector)] = found
        assert found == {(t, p) for t, p, poly in candidates if poly.overlaps(region)}, (visit, detector)
        # The patch whose inner box holds the detector centre is one of them.
        centre = sg.LonLat(region.getBoundingCircle().getCenter())
        tract, patch = rings.find_tract_patch(centre.getLon().asDegrees(), centre.getLat().asDegrees())
        assert (tract, patch) in found
    # The boresight at a patch corner: its central detector straddles the four patches there.
    assert {(TRACT, p) for p in (44, 45, 54, 55)} <= forward[(2, 4)]
    # patch -> visit+detectors: the same relation, read the other way.
    backward = {}
    for tract, patch in set().union(*forward.values()):
        ids = sky.query_data_ids(["visit", "detector"], skymap="rings12", tract=tract, patch=patch)
        backward[(tract, patch)] = {(d["visit"], d["detector"]) for d in ids}
    inverted: dict[tuple[int, int], set[tuple[int, int]]] = {}
    for key, patches in forward.items():
        for tp in patches:
            inverted.setdefault(tp, set()).add(key)
    assert backward == inverted
    # Mixed with ordinary where-terms: odd exposures are g-band.
    ids = sky.query_data_ids(["visit", "detector"], skymap="rings12", tract=TRACT, patch=45, where="band = 'r'")
    assert {(d["visit"], d["detector"]) for d in ids} == {k for k in backward[(TRACT, 45)] if k[0] % 2 == 0}
    # Visit -> tracts and patches with the visit's band.
    ids = sky.query_data_ids(["tract", "patch", "band"], instrument="SimCam", visit=2, detector=4)
    assert {(d["patch"], d["band"]) for d in ids} == {(p, "r") for _, p in forward[(2, 4)]}
    # Whole visits relate to tracts.
    assert {d["tract"] for d in sky.query_data_ids(["tract"], instrument="SimCam", visit=1)} == {TRACT}


def test_update_after_moving_a_boresight_changes_queries_at_once(sky, rings):
    tract = rings[TRACT]
    pw, ph = tract.patch_size
    ra, dec = (float(v) for v in tract.pixel_to_sky(7.5 * pw, 7.5 * ph))  # the middle of patch 77
    before = {d["patch"] for d in sky.query_data_ids(["patch"], instrument="SimCam", visit=1, detector=4)}
    assert before == {44, 45, 54, 55}  # the tract centre is the corner of these four patches
    old_region = detector_regions(sky)[(1, 4)]
    sky.insert_dimension_records("exposure", [exposure_record(1, ra, dec, band="g")], conflict="replace")
    table = sky.registry.schema.elements["visit"]
    with sky.registry.db.transaction(write=True) as conn:  # a field define_visits does not own
        conn.execute(table.update().where(table.c.id == 1).values(seeing=0.7))
    assert sky.define_visits("SimCam", update=True) == 8
    after = {d["patch"] for d in sky.query_data_ids(["patch"], instrument="SimCam", visit=1, detector=4)}
    assert after == {77}
    ids = sky.query_data_ids(["visit", "detector"], skymap="rings12", tract=TRACT, patch=77)
    assert {d["detector"] for d in ids if d["visit"] == 1} == set(range(9))
    (visit,) = sky.query_dimension_records("visit", instrument="SimCam", visit=1)
    assert (visit.tracking_ra, visit.tracking_dec, visit.seeing) == (ra, dec, 0.7)
    # No stale index rows: the index holds exactly the pixels of the new regions.
    spatial = sky.registry.records.spatial
    new_region = detector_regions(sky)[(1, 4)]
    assert new_region.encode() != old_region.encode()
    assert index_pixels(sky, "visit_detector_region", instrument="SimCam", visit=1, detector=4) == set(
        spatial.pixels(new_region))
    assert index_pixels(sky, "visit", instrument="SimCam", id=1) == set(spatial.pixels(visit.region))
    table = sky.registry.schema.skypix["visit_detector_region"]
    with sky.registry.db.transaction() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    assert count == sum(len(spatial.pixels(r)) for r in detector_regions(sky).values())


def test_raw_datasets_are_found_through_visit_definitions(sky, rings):
    sky.register_dataset_type(DatasetType("raw", ("instrument", "exposure", "detector"), "StructuredData"))
    for exposure in range(1, 9):
        for detector in (0, 4, 8):
            sky.put({"e": exposure, "d": detector}, "raw", instrument="SimCam", exposure=exposure, detector=detector)
    expected = {(d["visit"], d["detector"])
                for d in sky.query_data_ids(["visit", "detector"], skymap="rings12", tract=TRACT, patch=45)}
    refs = sky.query_datasets("raw", skymap="rings12", tract=TRACT, patch=45)
    assert refs
    assert {(r.data_id["exposure"], r.data_id["detector"]) for r in refs} == {
        (v, d) for v, d in expected if d in (0, 4, 8)}
    refs = sky.query_datasets("raw", skymap="rings12", tract=TRACT, patch=45, where="band = 'r'")
    assert all(r.data_id["exposure"] % 2 == 0 for r in refs)


def test_define_visits_bad_input_writes_nothing(repo, rings):
    repo.register_skymap(rings, tracts=[TRACT])
    with pytest.raises(DataIdError, match="not registered"):
        repo.define_visits("NoCam")
    with pytest.raises(DataIdError, match="no exposures of 'SimCam'"):
        repo.define_visits("SimCam")
    record = exposure_record(1, 10.0, 0.0)
    record.update(tracking_ra=None)
    repo.insert_dimension_records("exposure", [record, exposure_record(2, 10.0, 0.0)])
    before = snapshot_repo(repo)
    with pytest.raises(DataIdError, match=r"exposures \[1\] of 'SimCam' have no tracking_ra"):
        repo.define_visits("SimCam")
    assert snapshot_repo(repo) == before
    assert repo.define_visits("SimCam", exposures=[2]) == 1


def test_bad_regions_are_clear_errors_and_nothing_is_written(sky):
    before = snapshot_repo(sky)
    square = polygon_from_lonlat([(1, 1), (2, 1), (2, 2), (1, 2)])
    with pytest.raises(RegionError, match="detector records have no region"):
        sky.insert_dimension_records("detector", [{"instrument": "SimCam", "id": 9, "full_name": "S99",
                                                   "purpose": "SCIENCE", "region": square}])
    with pytest.raises(RegionError, match="no regions to update"):
        sky.update_regions("exposure", [{"instrument": "SimCam", "id": 1, "region": square}])
    # Degenerate polygons (collinear vertices along the equator; made without sphgeom's hull,
    # which would refuse them) are refused, for insert and for update alike.
    equator = np.array([[[1.0, 0.0, 0.0], [0.7071, 0.7071, 0.0], [0.0, 1.0, 0.0]]])
    (degenerate,) = polygons_from_vertices(equator)
    with pytest.raises(RegionError, match="degenerate"):
        sky.update_regions("visit_detector_region", [{"instrument": "SimCam", "visit": 1, "detector": 0,
                                                      "region": degenerate}])
    with pytest.raises(RegionError, match="degenerate"):
        sky.insert_dimension_records("visit_detector_region", [{"instrument": "SimCam", "visit": 1,
                                                                "detector": 0, "region": degenerate}],
                                     conflict="replace")
    with pytest.raises(RegionError, match="at least 3"):
        polygon_from_lonlat([(1, 1), (2, 2)])
    with pytest.raises(RegionError, match="not convex"):
        polygon_from_lonlat([(0, 0), (2, 0), (1, 0.2), (2, 2), (0, 2)])
    assert snapshot_repo(sky) == before


# -- packers -------------------------------------------------------------------------------------
def test_packers_round_trip_through_the_butler_and_the_instrument(repo, rings):
    repo.register_skymap(rings, tracts=[TRACT])
    rng = np.random.default_rng(1)
    via_butler = repo.packer("visit_detector", instrument="SimCam")
    via_instrument = SimCam().packer("visit_detector")
    assert via_butler.fields == via_instrument.fields and via_butler.n_bits == via_instrument.n_bits == 24
    ids = {"visit": rng.integers(0, 1 << 20, 1000), "detector": rng.integers(0, 9, 1000)}
    packed = via_butler.pack(ids)
    assert packed.dtype == np.uint64
    assert np.array_equal(packed, via_instrument.pack(ids))
    unpacked = via_instrument.unpack(packed)
    assert all(np.array_equal(unpacked[k], ids[k]) for k in ids)
    exp = repo.packer("exposure_detector", instrument="SimCam")
    assert exp.fields == SimCam().packer("exposure_detector").fields
    tp = repo.packer("tract_patch_band", skymap="rings12", bands=["g", "r", "i"])
    data = {"tract": np.full(5, TRACT), "patch": np.arange(5), "band": np.array(["g", "r", "i", "r", "g"])}
    back = tp.unpack(tp.pack(data))
    assert np.array_equal(back["patch"], data["patch"]) and list(back["band"]) == list(data["band"])
    assert repo.packer("tract_patch", skymap="rings12").n_bits == rings.packer().n_bits
    assert set(repo.packer("tract_patch_band", skymap="rings12").bands) == set(SimCam().bands)
    with pytest.raises(ValueError, match="unknown packer kind"):
        repo.packer("visit_band", instrument="SimCam")
    with pytest.raises(DataIdError, match="needs skymap"):
        repo.packer("tract_patch")
    with pytest.raises(DataIdError, match="takes"):
        repo.packer("visit_detector", instrument="SimCam", skymap="rings12")
    with pytest.raises(DataIdError, match="'NoCam' is not registered"):
        repo.packer("visit_detector", instrument="NoCam")
    with pytest.raises(ValueError, match="unknown instrument packer"):
        SimCam().packer("tract_patch")
    with pytest.raises(DataIdError, match="out of range"):
        via_instrument.pack({"visit": [1, 1 << 20], "detector": [0, 0]})


# -- flavors -------------------------------------------------------------------------------------
def test_flavors_and_coadd_queries(repo, rings):
    repo.register_skymap(rings, tracts=[TRACT])
    assert repo.register_flavors(default_flavors(nights=[20261124, 20261125])) == 4
    assert repo.register_flavors(["deep", "nightly-20261124"]) == 0  # the same definitions: nothing new
    assert repo.register_flavors(["chi2"]) == 1
    flavors = {r.name: r for r in repo.query_dimension_records("flavor")}
    assert set(flavors) == {"deep", "bestSeeing", "chi2", "nightly-20261124", "nightly-20261125"}
    assert (flavors["nightly-20261125"].kind, flavors["nightly-20261125"].day_obs) == ("nightly", 20261125)
    assert flavors["deep"].day_obs is None
    repo.register_dataset_type(DatasetType("coadd", ("skymap", "tract", "patch", "band", "flavor"),
                                           "StructuredData"))
    for flavor in flavors:
        for patch in (44, 45):
            for band in ("g", "r"):
                repo.put({"flavor": flavor}, "coadd", skymap="rings12", tract=TRACT, patch=patch, band=band,
                         flavor=flavor)
    refs = repo.query_datasets("coadd", skymap="rings12", tract=TRACT,
                               where="flavor.kind = 'nightly' AND flavor.day_obs = 20261124")
    assert len(refs) == 4 and {r.data_id["flavor"] for r in refs} == {"nightly-20261124"}
    refs = repo.query_datasets("coadd", skymap="rings12", tract=TRACT, patch=45, band="r",
                               where="flavor.kind = 'nightly'")
    assert sorted(r.data_id["flavor"] for r in refs) == ["nightly-20261124", "nightly-20261125"]
    assert repo.get("coadd", skymap="rings12", tract=TRACT, patch=44, band="g", flavor="deep") == {"flavor": "deep"}
    ids = repo.query_data_ids(["flavor"], where="flavor.kind IN ('deep', 'bestSeeing')")
    assert sorted(d["flavor"] for d in ids) == ["bestSeeing", "deep"]


@pytest.mark.parametrize("flavor, match", [
    ("shallow", r"unknown flavor kind 'shallow'; kinds: \['deep'"),
    ("nightly", r"needs its night"),
    ({"kind": "nightly"}, r"needs day_obs"),
    ({"kind": "nightly", "day_obs": 20261332}, r"not a date"),
    ({"kind": "deep", "day_obs": 20261124}, r"only nightly flavors have a day_obs"),
    ({"name": "nightly-20261124", "kind": "nightly", "day_obs": 20261125}, r"says nightly for 20261124"),
    ({"name": "../deep", "kind": "deep"}, r"must be 1-64 letters"),
    ({"kind": "deep", "seeing": 0.7}, r"unknown flavor field"),
])
def test_bad_flavors_are_rejected(repo, flavor, match):
    before = snapshot_repo(repo)
    with pytest.raises(DataIdError, match=match):
        repo.register_flavors(["deep", flavor])
    assert snapshot_repo(repo) == before


def test_conflicting_flavor_definitions(repo):
    repo.register_flavors(["deep"])
    before = snapshot_repo(repo)
    with pytest.raises(ConflictError, match=r"description: 'all usable visits' != 'only the best'"):
        repo.register_flavors([{"kind": "deep", "description": "only the best"}])
    with pytest.raises(ConflictError, match="given twice"):
        repo.register_flavors([{"name": "x", "kind": "deep"}, {"name": "x", "kind": "chi2"}])
    assert snapshot_repo(repo) == before


def test_flavor_helpers():
    assert [f["name"] for f in default_flavors(nights=[20261124, 20261124])] == ["deep", "bestSeeing",
                                                                                 "nightly-20261124"]
    assert flavor_record("nightly-20261124") == {"name": "nightly-20261124", "kind": "nightly",
                                                 "day_obs": 20261124, "description": "visits of the night 20261124"}
    assert {"deep", "bestSeeing", "nightly", "chi2"} <= set(FLAVOR_KINDS)


def test_envelope_fast_path_equals_the_general_path():
    """Polygons strictly inside one cube face take a one-face path; its cells are the same."""
    from butler.registry._pixelization import CubeFacePixelization

    pixelization = CubeFacePixelization(9)
    rng = np.random.default_rng(0)
    batches = [RingsSkyMap("rings120", 120).patch_vertices(np.arange(0, 18938, 97)).reshape(-1, 4, 3)]
    for size, count in ((1e-4, 5000), (1e-2, 2000), (0.05, 200)):  # squares anywhere, edges and corners included
        centre = rng.normal(size=(count, 3))
        centre /= np.linalg.norm(centre, axis=1)[:, None]
        east = np.cross(centre, [0.0, 0.0, 1.0])
        east /= np.linalg.norm(east, axis=1)[:, None]
        north = np.cross(centre, east)
        angle = np.arange(4) * np.pi / 2 + rng.uniform(0, 2 * np.pi, (count, 1))
        v = centre[:, None, :] + size * (np.cos(angle)[..., None] * east[:, None, :]
                                         + np.sin(angle)[..., None] * north[:, None, :])
        batches.append(v / np.linalg.norm(v, axis=2)[..., None])
    edge = np.array([[[1.0, 1.0, 0.1], [1.0, 1.0, 0.2], [0.9, 1.0, 0.2]]])  # a vertex on a face boundary
    batches.append(edge / np.linalg.norm(edge, axis=2)[..., None])
    for vertices in batches:
        fast = pixelization.envelopes(vertices)
        general = pixelization._envelopes_all_faces(vertices)
        assert all(np.array_equal(x, y) for x, y in zip(fast, general))
