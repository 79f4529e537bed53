"""Behaviour of the core fast paths (no timings here: see benchmarks/).

Driver-level inserts keep their conflict explanations on every backend; ingest checks and
checksums; the compiled file templates give the same paths as walking the fields; the JSON
repository config and the JSON copy of the universe read like their YAML; queries over several
collections build the same refs.
"""

from __future__ import annotations

import itertools
import json
import os

import pytest

from butler import Butler
from butler.datastore import checksum_file
from butler.datastore._templates import DEFAULT_TEMPLATE, FileTemplate
from butler.dimensions import DimensionUniverse
from butler.errors import ConflictError, DataIdError, TemplateError
from butler.testing import snapshot_repo

DATA_ID = {"instrument": "SimCam", "visit": 12, "detector": 3}


# -- inserts through the driver ------------------------------------------------------------------
def test_ingest_twice_into_one_run_is_a_conflict(simcam_repo, tmp_path):
    butler = simcam_repo
    src = tmp_path / "m.json"
    src.write_text('{"a": 1}')
    butler.ingest("metrics", [(src, DATA_ID)], transfer="direct")
    before = snapshot_repo(butler)
    with pytest.raises(ConflictError, match="already exists in run 'u/tester/run1'"):
        butler.ingest("metrics", [(src, DATA_ID)], transfer="direct")
    with pytest.raises(ConflictError, match="given twice"):
        butler.ingest("metrics", [(src, {**DATA_ID, "visit": 14}), (src, {**DATA_ID, "visit": 14})],
                      transfer="direct")
    assert snapshot_repo(butler) == before


def test_put_of_unknown_detector_explains_the_missing_record(simcam_repo):
    butler = simcam_repo
    before = snapshot_repo(butler)
    with pytest.raises(DataIdError, match="detector"):
        butler.put({"a": 1}, "metrics", instrument="SimCam", visit=12, detector=4242)
    assert snapshot_repo(butler) == before


def test_many_refs_round_trip_with_their_file_records(simcam_repo):
    butler = simcam_repo
    items = [({"d": d}, "metrics", {"instrument": "SimCam", "visit": v, "detector": d}) for v in (12, 14)
             for d in range(9)]
    refs = butler.put_many(items)
    assert len({r.id for r in refs}) == len(items)
    for ref in refs:
        assert butler.get(ref) == {"d": ref.data_id["detector"]}
        assert butler.exists(ref)
    found = butler.query_datasets("metrics")
    assert {r.id: r.data_id for r in found} == {r.id: r.data_id for r in refs}
    assert butler.verify() == []


# -- ingest ----------------------------------------------------------------------------------------
def test_ingest_records_checksum_and_size_of_small_and_large_files(simcam_repo, tmp_path):
    butler = simcam_repo
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"x": 1}))
    large = tmp_path / "large.json"
    large.write_text(json.dumps({"x": "y" * (3 << 20)}))  # read in blocks, not whole
    refs = butler.ingest("metrics", [(small, DATA_ID), (large, {**DATA_ID, "detector": 4})], transfer="hardlink")
    for src, ref in zip((small, large), refs):
        with butler.registry.db.transaction() as conn:
            (record,) = butler.registry.datasets.files_of(conn, [ref.id])[ref.id]
        assert record.checksum == checksum_file(str(src))
        assert record.file_size == os.path.getsize(src)
    assert butler.get(refs[1]) == {"x": "y" * (3 << 20)}


def test_ingest_refuses_a_directory_and_an_existing_destination(simcam_repo, tmp_path):
    butler = simcam_repo
    with pytest.raises(FileNotFoundError, match="not a regular file"):
        butler.ingest("metrics", [(tmp_path, DATA_ID)])
    src = tmp_path / "m.json"
    for transfer in ("hardlink", "symlink", "copy", "move"):
        # Find where the file goes, remove that run, and put a stray file there.
        src.write_text('{"a": 1}')
        (ref,) = butler.ingest("metrics", [(src, DATA_ID)], run="u/tester/probe", transfer=transfer)
        with butler.registry.db.transaction() as conn:
            (record,) = butler.registry.datasets.files_of(conn, [ref.id])[ref.id]
        butler.remove_runs("u/tester/probe")
        stray = os.path.join(butler.root, record.path)
        os.makedirs(os.path.dirname(stray), exist_ok=True)
        with open(stray, "w") as f:
            f.write("stray")
        src.write_text('{"a": 1}')
        before = snapshot_repo(butler)
        with pytest.raises(ConflictError, match="already exists"):
            butler.ingest("metrics", [(src, DATA_ID)], run="u/tester/probe", transfer=transfer)
        assert snapshot_repo(butler) == before
        with open(stray) as f:
            assert f.read() == "stray"  # left alone
        assert src.read_text() == '{"a": 1}'
        os.unlink(stray)


def test_ingested_ids_are_random_version_4_uuids(simcam_repo, tmp_path):
    butler = simcam_repo
    sources = []
    for d in range(9):
        path = tmp_path / f"m{d}.json"
        path.write_text("{}")
        sources.append((path, {**DATA_ID, "detector": d}))
    refs = butler.ingest("metrics", sources, transfer="direct")
    assert all(r.id.version == 4 and r.id.variant == "specified in RFC 4122" for r in refs)
    assert len({r.id for r in refs}) == len(refs)


# -- templates -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    DEFAULT_TEMPLATE,
    "{run}/{dataset_type}/{band?}_{day_obs?}/{dataset_type}_{visit:06d}_{detector:03d}",
    "{run}/{id}",
    "{run}/{dataset_type}/{component?}.{dims}",
    "{run}/{dataset_type}/{band}/{dims}",
    "{run}/x-{tract?}-{patch?}/{dataset_type}_{dims}",
])
def test_compiled_templates_give_the_paths_of_the_field_walk(text):
    template = FileTemplate(text)
    required = ("instrument", "visit", "detector")
    base = {"run": "u/a/r", "dataset_type": "calexp", "instrument": "SimCam", "visit": 12, "detector": 3,
            "id": "0123abcd", "patch": 7}
    for band, day, component, tract in itertools.product([None, "r"], [None, 20261124], [None, "wcs"], [None, 5]):
        values = dict(base, band=band, day_obs=day, component=component, tract=tract)
        try:
            expected = template._format_fields(values, required)
        except TemplateError:
            with pytest.raises(TemplateError, match="needs"):
                template.format(values, required)
            continue
        assert template.format(values, required) == expected


# -- configuration and universe ------------------------------------------------------------------
def test_config_is_json_and_a_yaml_rewrite_still_reads(tmp_path):
    root = tmp_path / "repo"
    Butler.create(str(root))
    text = (root / "butler.yaml").read_text()
    assert json.loads(text.split("\n", 1)[1])["registry"]["db"] == "sqlite:///butler.sqlite3"
    import yaml

    other = tmp_path / "other"
    Butler.create(str(other), templates={"metrics": "{run}/{dataset_type}/{dims}"})
    data = yaml.safe_load((other / "butler.yaml").read_text())
    (other / "butler.yaml").write_text("# edited by hand\n" + yaml.safe_dump(data, default_flow_style=False))
    butler = Butler(str(other))
    assert butler._config.templates == {"metrics": "{run}/{dataset_type}/{dims}"}


def test_universe_from_its_json_copy_is_the_universe_of_its_text(tmp_path):
    from butler.registry._registry import _universe_from_attributes, _universe_json

    universe = DimensionUniverse.default()
    rows = {"universe": universe.text, **_universe_json(universe)}
    assert "universe_json" in rows
    assert _universe_from_attributes(rows) is universe  # the same interned universe
    text = universe.text + "\n# a comment changes the identity\n"
    parsed = _universe_from_attributes({"universe": text, "universe_json": json.dumps(
        {"digest": DimensionUniverse.from_text(text).digest, "config": json.loads(rows["universe_json"])["config"]})})
    assert parsed is DimensionUniverse.from_text(text)
    stale = {"universe": universe.text, "universe_json": json.dumps({"digest": "0" * 32, "config": {}})}
    assert _universe_from_attributes(stale) is universe  # a digest that does not match: the text wins
    assert _universe_from_attributes({"universe": universe.text}) is universe  # repositories made before


# -- queries over several collections ---------------------------------------------------------------
def test_query_refs_over_several_collections(simcam_repo):
    butler = simcam_repo
    first = butler.put({"n": 1}, "metrics", DATA_ID, run="u/tester/a")
    second = butler.put({"n": 2}, "metrics", DATA_ID, run="u/tester/b")
    other = butler.put({"n": 3}, "metrics", {**DATA_ID, "detector": 4}, run="u/tester/b")
    found = butler.query_datasets("metrics", collections=["u/tester/a", "u/tester/b"])
    assert {(r.id, r.run) for r in found} == {(first.id, "u/tester/a"), (other.id, "u/tester/b")}
    everything = butler.query_datasets("metrics", collections="u/tester/*")
    assert sorted((r.id, r.run) for r in everything) == sorted(
        [(first.id, "u/tester/a"), (second.id, "u/tester/b"), (other.id, "u/tester/b")])
    for ref in everything:
        assert hash(ref.data_id) == hash(type(ref.data_id).from_values(ref.data_id.group, ref.data_id.values))
        assert ref.component is None and ref in (first, second, other)


@pytest.mark.parametrize("templates,instrument_templates", [
    ({}, {}),
    ({"metrics": "{run}/{dataset_type}/{band}/{day_obs}/{visit:06d}_{detector:03d}"}, {}),
    ({"default": "{run}/{id}"}, {}),
    ({}, {"SimCam": {"metrics": "{run}/sim/{physical_filter?}/{dataset_type}_{dims}"}}),
    ({}, {"SimCam": {"default": "{run}/{instrument}/{dataset_type}/{id}"}}),
])
def test_ingest_paths_are_the_datastore_paths(simcam_repo, templates, instrument_templates):
    from butler._dataset_ref import DatasetRef
    from butler._ingest import _path_maker
    from butler.datastore._datastore import FileDatastore
    from butler.datastore._templates import TemplateSet

    butler = simcam_repo
    datastore = FileDatastore(butler.root, TemplateSet(templates, instrument_templates),
                              implied=butler.registry.data_ids.expand_implied)
    type_rec = butler.registry.dataset_types.get("metrics")
    path = _path_maker(butler.registry.data_ids, datastore, "metrics", type_rec.group, "u/tester/run1")
    for visit, detector in [(12, 0), (14, 8)]:
        for data_id in ({"instrument": "SimCam", "visit": visit, "detector": detector},
                        {"instrument": "SimCam", "visit": visit, "detector": detector, "band": "zz"}):
            coord = butler.registry.data_ids.standardize(type_rec.group, data_id, {})
            ref = DatasetRef(type_rec.dataset_type, coord, "u/tester/run1")
            assert path(ref, ".json") == datastore.relative_path(ref, datastore.template_values(ref), ".json")
