"""Butler.import_ and ``butler import``: round trips keep ids, provenance, tags, chains and
validity ranges; a second import changes nothing; every refusal names what is wrong and leaves the
destination exactly as it was (registry rows and file tree compared before and after)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_transfer_export import RUN1, RUN2, travel_repo  # noqa: F401 - the fixture

from butler import Butler
from butler.cli import cli
from butler.datastore import checksum_bytes
from butler.errors import ConflictError, ReadOnlyError, RunOwnershipError
from butler.testing import SIMCAM_VISITS, snapshot_repo
from butler.transfer import BundleChecksumError

COLLECTIONS = ["u/tester/all", RUN2, "SimCam/calib/flats"]


@pytest.fixture
def exported(travel_repo, tmp_path):  # noqa: F811
    """The travel repository exported (every collection) as a zip and as a directory."""
    travel_repo.export(tmp_path / "all.zip", collections=COLLECTIONS)
    travel_repo.export(tmp_path / "all", collections=COLLECTIONS)
    return travel_repo


@pytest.fixture
def dest(repo_factory):
    return Butler(repo_factory("dest").root, writeable=True)


@pytest.mark.parametrize("kind", ["all.zip", "all"])
def test_round_trip_keeps_ids_provenance_tags_chains_calibs(exported, dest, tmp_path, kind):
    src = exported
    report = dest.import_(tmp_path / kind)
    assert report.datasets == 11 and report.skipped == 0  # 8 metrics, a calexp, a raw_text, a flat
    comparison = Butler.compare(src, dest)
    assert comparison.identical, comparison
    for run in (RUN1, RUN2):
        assert {r.id for r in dest.query_datasets("metrics", collections=run)} == {r.id for r in src.refs[run]}
        for ref in src.refs[run]:
            assert dest.get(ref) == src.get(ref)
    assert dest.get_chain("u/tester/all") == ["u/tester/best", RUN1]
    assert [r.id for r in dest.query_datasets("metrics", collections="u/tester/best")] == [src.refs[RUN2][0].id]
    assert dest.collection_info("u/tester/best").doc == "hand-picked"
    assert dest.collection_info(RUN1).owner == dest.user
    assert len(dest.query_calibrations("SimCam/calib/flats", "flat")) == 1
    when = [(src.flat.data_id, "2026-06-01")]
    found = dest.find_calibs("flat", when, collections="SimCam/calib/flats")
    assert [r.id for r in found.values()] == [src.flat.id]
    provenance = dest.provenance(src.refs[RUN1][0])
    assert provenance is not None and provenance["quantum_id"] == src.quantum
    assert provenance["inputs"] == [src.direct.id] and provenance["task"] == "measure"
    assert provenance["outputs"] == [src.refs[RUN1][0].id]
    raw = dest.get("raw_text", instrument="SimCam", visit=12, detector=2, collections=RUN1)
    assert raw == b"raw bytes of visit 12 detector 2"
    direct_uri = dest.get_uri(src.direct)
    assert direct_uri.startswith(dest.root + os.sep)  # a direct file lands inside the run
    calexp = dest.get("calexp", instrument="SimCam", visit=12, detector=0, collections=RUN1)
    assert np.array_equal(calexp.image, np.arange(16, dtype=np.float32).reshape(4, 4))
    assert dest.verify() == []


def test_second_import_changes_nothing(exported, dest, tmp_path):
    dest.import_(tmp_path / "all.zip")
    before = snapshot_repo(dest)
    again = dest.import_(tmp_path / "all")  # the same content, from the other container
    assert again.datasets == 0 and again.skipped == 11 and again.collections == []
    assert snapshot_repo(dest) == before


def _refused(dest, bundle, error, match, **kwargs):
    before = snapshot_repo(dest)
    with pytest.raises(error, match=match):
        dest.import_(bundle, **kwargs)
    assert snapshot_repo(dest) == before


def test_conflicting_dataset_same_data_id_other_id_is_refused(exported, dest, tmp_path):
    from butler.instrument import SimCam

    dest.register_instrument(SimCam(), calibs=False)
    dest.insert_dimension_records("visit", SIMCAM_VISITS)
    from butler import DatasetType

    dest.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    mine = dest.put({"mine": 1}, "metrics", instrument="SimCam", visit=14, detector=1, run=RUN2)
    _refused(dest, tmp_path / "all.zip", ConflictError,
             rf"metrics .*visit.*14.* in run '{RUN2}' is already in the repository as dataset {mine.id}")


def test_conflicting_dataset_same_id_other_content_is_refused(exported, dest, tmp_path):
    dest.import_(tmp_path / "all.zip")
    bundle = tmp_path / "all"
    table_path = bundle / "manifest" / "datasets" / "metrics.parquet"
    table = pq.read_table(table_path)
    rows = table.to_pylist()
    changed = b'{"changed": true}'
    (bundle / rows[0]["path"]).write_bytes(changed)
    rows[0].update(checksum=checksum_bytes(changed), file_size=len(changed))
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), table_path)
    _refused(dest, bundle, ConflictError, rf"dataset {rows[0]['dataset_id']} .* already in the repository with other "
                                          "content")


def test_conflicting_dimension_record_is_refused(exported, dest, tmp_path):
    from butler.instrument import SimCam

    dest.register_instrument(SimCam(), calibs=False)
    dest.insert_dimension_records("visit", [{**SIMCAM_VISITS[0], "exposure_time": 99.0}])
    _refused(dest, tmp_path / "all.zip", ConflictError,
             r"the visit record \{'instrument': 'SimCam', 'id': 12\} differs .*exposure_time=99.0 here, 30.0 in the bundle")


def test_read_only_and_foreign_runs_are_refused(exported, dest, tmp_path, monkeypatch):
    _refused(Butler(dest.root), tmp_path / "all.zip", ReadOnlyError, "read-only")
    if dest.registry.db.dialect == "sqlite":  # the owner is the OS account or $BUTLER_USER
        monkeypatch.setenv("BUTLER_USER", "somebody_else")
        Butler(dest.root, writeable=True).register_run(RUN2)
        monkeypatch.setenv("BUTLER_USER", "tester")
        _refused(Butler(dest.root, writeable=True), tmp_path / "all.zip", RunOwnershipError, "somebody_else")


@pytest.mark.parametrize("kind", ["zip", "dir"])
def test_damaged_bundle_is_refused_before_anything_changes(exported, dest, tmp_path, kind):
    bundle = tmp_path / "all"
    path = pq.read_table(bundle / "manifest" / "datasets" / "metrics.parquet").column("path").to_pylist()[3]
    data = (bundle / path).read_bytes()
    (bundle / path).write_bytes(data[:-1] + b"#")
    if kind == "zip":
        import zipfile

        with zipfile.ZipFile(tmp_path / "damaged.zip", "w") as z:
            for d, _, names in os.walk(bundle):
                for n in names:
                    full = os.path.join(d, n)
                    z.write(full, os.path.relpath(full, bundle))
        bundle = tmp_path / "damaged.zip"
    _refused(dest, bundle, BundleChecksumError, f"metrics dataset .*checksum mismatch for .*{path}")
    assert dest.query_dataset_types() == []  # not even the dataset types were registered
    assert sorted(os.listdir(dest.root)) == sorted(n for n in os.listdir(dest.root) if not n.startswith(".tmp-"))


@pytest.mark.parametrize("transfer", ["hardlink", "move"])
def test_hardlink_and_move_from_a_directory_bundle(exported, dest, tmp_path, transfer):
    bundle = tmp_path / "all"
    shutil.copytree(tmp_path / "all", tmp_path / "copy")
    path = pq.read_table(bundle / "manifest" / "datasets" / "metrics.parquet").column("path").to_pylist()[0]
    inode = os.stat(bundle / path).st_ino
    dest.import_(bundle, transfer=transfer)
    assert os.stat(os.path.join(dest.root, path)).st_ino == inode
    assert os.path.exists(bundle / path) == (transfer == "hardlink")
    assert Butler.compare(exported, dest).identical and dest.verify() == []


def test_cli_import(exported, dest, tmp_path):
    result = CliRunner().invoke(cli, ["import", dest.root, str(tmp_path / "all.zip")])
    assert result.exit_code == 0, result.output
    assert "imported 11 datasets" in result.output
    result = CliRunner().invoke(cli, ["import", dest.root, str(tmp_path / "all.zip")])
    assert result.exit_code == 0 and "11 already there" in result.output
    result = CliRunner().invoke(cli, ["import", dest.root, str(tmp_path / "nothing.zip")])
    assert result.exit_code == 2 and "no bundle at" in result.output
    assert "Example" in CliRunner().invoke(cli, ["import", "--help"]).output
