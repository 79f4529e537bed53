"""Butler.compare and ``butler compare``: content (type, data ID, run, checksums), not ids, across
backends; and the transfer commands of the CLI (export, verify-bundle, query-datasets --show-uri)."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from butler import Butler, DatasetType
from butler.cli import cli
from butler.testing import SIMCAM_VISITS

RUN1, RUN2 = "u/tester/run1", "u/tester/run2"


def build(butler: Butler) -> Butler:
    """The same 'pipeline' on any repository: SimCam, two visits, metrics in two runs."""
    from butler.instrument import SimCam

    butler.register_instrument(SimCam(), calibs=False)
    butler.insert_dimension_records("visit", SIMCAM_VISITS)
    butler.register_dataset_type(DatasetType("metrics", ("instrument", "visit", "detector"), "StructuredData"))
    butler.register_dataset_type(DatasetType("summary", ("instrument", "visit"), "StructuredData"))
    for run in (RUN1, RUN2):
        butler.put_many([({"v": v, "d": d, "run": run}, "metrics", {"instrument": "SimCam", "visit": v, "detector": d})
                         for v in (12, 14) for d in range(3)], run=run)
        butler.put_many([({"v": v}, "summary", {"instrument": "SimCam", "visit": v}) for v in (12, 14)], run=run)
    return butler


@pytest.fixture
def pair(repo_factory, tmp_path):
    """Repository a on SQLite and b on each backend, built the same way (other dataset ids)."""
    a = build(Butler.create(tmp_path / "a", run=RUN1))
    b = build(Butler(repo_factory("b").root, writeable=True))
    return a, b


def test_same_pipeline_same_inputs_compare_identical(pair):
    a, b = pair
    assert {r.id for r in a.query_datasets("metrics", collections=RUN1)}.isdisjoint(
        {r.id for r in b.query_datasets("metrics", collections=RUN1)})
    report = Butler.compare(a, b)
    assert report.identical, report
    assert report.counts == {"a": 16, "b": 16, "same": 16, "only_in_a": 0, "only_in_b": 0, "different": 0}
    assert Butler.compare(a.root, b.root, collections=[RUN1]).counts["same"] == 8


def test_differences_are_named(pair):
    a, b = pair
    b.put({"v": 12, "d": 1, "run": RUN1, "changed": True}, "metrics", instrument="SimCam", visit=12, detector=1,
          run=RUN1, replace=True)
    b.put({"extra": 1}, "metrics", instrument="SimCam", visit=14, detector=5, run=RUN2)
    a.put({"moved": 1}, "summary", instrument="SimCam", visit=12, run="u/tester/run3")
    report = Butler.compare(a, b)
    assert not report.identical
    assert [(k.dataset_type, k.data_id, k.run) for k in report.different] == [
        ("metrics", {"instrument": "SimCam", "detector": 1, "visit": 12}, RUN1)]
    assert [(k.dataset_type, k.data_id["detector"], k.run) for k in report.only_in_b] == [("metrics", 5, RUN2)]
    assert [(k.dataset_type, k.run) for k in report.only_in_a] == [("summary", "u/tester/run3")]
    assert report.counts["same"] == 15
    # Restricted to what did not change: identical.
    assert Butler.compare(a, b, collections=[RUN2], dataset_types=["summary"]).identical
    assert not Butler.compare(a, b, collections=[RUN1], dataset_types="metr*").identical
    # A collection only one side has: its datasets are only on that side.
    only = Butler.compare(a, b, collections=["u/tester/run3"])
    assert len(only.only_in_a) == 1 and not only.only_in_b
    assert json.loads(json.dumps(report.to_dict()))["counts"]["different"] == 1


def run(*args: str, code: int = 0):
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def test_cli_compare_exit_codes_and_json(pair):
    a, b = pair
    out = run("compare", a.root, b.root).output
    assert "are identical: 16 datasets the same" in out
    b.put({"changed": True}, "summary", instrument="SimCam", visit=14, run=RUN2, replace=True)
    out = run("compare", a.root, b.root, code=1).output
    assert "different" in out and "summary" in out and "visit=14" in out
    data = json.loads(run("compare", a.root, b.root, "-c", RUN2, "--format", "json", code=1).output)
    assert data["identical"] is False and data["different"] == [
        {"dataset_type": "summary", "data_id": {"instrument": "SimCam", "visit": 14}, "run": RUN2}]
    run("compare", a.root, b.root, "-c", RUN1)  # identical there: exit 0
    assert "does not exist" in run("compare", a.root, os.path.join(a.root, "nothing"), code=2).output


def test_cli_export_verify_bundle_and_show_uri(pair, tmp_path):
    a, _ = pair
    bundle = tmp_path / "out.zip"
    out = run("export", a.root, str(bundle), "-c", RUN1, "-t", "metrics", "--where", "visit = 12").output
    assert "exported 3 datasets (3 files" in out
    assert "3 files verified, no problems" in run("verify-bundle", str(bundle)).output
    assert "already exists" in run("export", a.root, str(bundle), "-c", RUN1, code=2).output
    assert "-c COLLECTION" in run("export", a.root, str(tmp_path / "x.zip"), code=2).output
    bundle.write_bytes(bundle.read_bytes()[:200])
    assert "not a readable zip file" in run("verify-bundle", str(bundle), code=2).output
    rows = json.loads(run("query-datasets", a.root, "metrics", "-c", RUN1, "--show-uri", "--format", "json").output)
    assert len(rows) == 6
    for row in rows:
        assert os.path.isabs(row["uri"]) and os.path.isfile(row["uri"])
        assert row["uri"].endswith(f"metrics_SimCam_{row['detector']}_{row['visit']}.json")
    assert "uri" not in json.loads(run("query-datasets", a.root, "metrics", "-c", RUN1, "--format", "json").output)[0]


@pytest.mark.parametrize("command", ["export", "compare", "verify-bundle"])
def test_transfer_commands_have_help_with_an_example(command):
    assert "Example" in run(command, "--help").output
