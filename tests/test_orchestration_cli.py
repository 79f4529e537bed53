"""``butler run``: --id shorthand, --dry-run, --config, restart options and exit codes (0 ok, 1 failures,
2 user errors)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from butler import Butler
from butler.cli import cli
from orchestration import Plan
from orchestration.cli import dashboard_link, make_client, parse_id
from orchestration.testing import make_metrics_repo

OUT = "u/tester/cli"


@pytest.fixture
def repo(tmp_path):
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler, visits=4, detectors=4)
    return Butler(butler.root, writeable=True)


@pytest.fixture
def pipeline(tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent("""
        description: add then sum
        tasks:
          add:
            class: orchestration.testing.AddTask
            config: {offset: 1.0}
          sum: orchestration.testing.SumTask
        subsets:
          adds: [add]
    """))
    return str(path)


def butler_run(repo, pipeline, *args, code=0):
    argv = ["run", repo.root, pipeline, "-i", "in", "-o", OUT, "--cluster", "threads:2", "--no-progress", *args]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr if code == 0 else "",
                                      result.exception)
    return result


def outputs(butler, dataset_type="added", run=OUT):
    butler.refresh()
    if dataset_type not in {t.name for t in butler.query_dataset_types()}:
        return []
    return sorted((r.data_id["visit"], r.data_id.get("detector")) for r in butler.query_datasets(dataset_type,
                                                                                               collections=run))


# -- the --id shorthand --------------------------------------------------------------------------------
def test_parse_id():
    where, bind = parse_id("tract=9000 patch=44..46 band=g^r")
    assert where == "tract = :id0_0 AND patch IN (:id1_0) AND (band = :id2_0 OR band = :id2_1)"
    assert bind == {"id0_0": 9000, "id1_0": [44, 45, 46], "id2_0": "g", "id2_1": "r"}
    where, bind = parse_id("visit=1..9:4^20 ccd=3", {"ccd": "detector"})
    assert where == "(visit IN (:id0_0) OR visit = :id0_1) AND detector = :id1_0"
    assert bind == {"id0_0": [1, 5, 9], "id0_1": 20, "id1_0": 3}
    where, bind = parse_id("band='r; DROP TABLE x'")
    assert bind == {"id0_0": "r; DROP TABLE x"} and "DROP" not in where  # values are bound, never pasted
    for bad, message in [("visit", "is not key=value"), ("visit=5..2", "bad range"), ("1=2", "is not key=value")]:
        with pytest.raises(click.BadParameter, match=message):
            parse_id(bad)


def test_id_ranges_alternatives_and_alias(repo, pipeline):
    result = butler_run(repo, pipeline, "--id", "visit=1..2 ccd=1^3")
    assert "4 quanta succeeded" not in result.output and "6 quanta succeeded" in result.output
    assert outputs(repo) == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert outputs(repo, "visit_sum") == [(1, None), (2, None)]
    total = repo.get("visit_sum", instrument="SimCam", visit=2, collections=OUT)
    assert total["detectors"] == [1, 3] and total["value"] == 21 + 1 + 23 + 1


def test_where_combined_with_id(repo, pipeline):
    butler_run(repo, pipeline, "--id", "visit=0..3", "--where", "detector > 2")
    assert outputs(repo) == [(v, 3) for v in range(4)]


def test_dry_run_prints_the_plan_and_writes_nothing(repo, pipeline, tmp_path):
    plan_path = str(tmp_path / "plan.gz")
    result = butler_run(repo, pipeline, "--id", "visit=1", "--dry-run", "--explain", "sum:visit=1",
                        "--save-plan", plan_path)
    lines = result.output.splitlines()
    assert lines[0].split() == ["task", "run", "skip", "reasons"]
    assert lines[2].split() == ["add", "4", "0", "-"] and lines[3].split() == ["sum", "1", "0", "-"]
    assert "output run: u/tester/cli; inputs: in" in result.output
    assert "sum {instrument: 'SimCam', visit: 1" in result.output and "inputs [added: 4]" in result.output
    assert "quanta succeeded" not in result.output
    assert repo.query_collections(OUT) == []
    assert len(Plan.load(plan_path).quanta) == 5


def test_config_override_and_tasks_subset(repo, pipeline):
    butler_run(repo, pipeline, "--id", "visit=0", "-c", "add:offset=100", "--config", "add:sleep=0", "--tasks", "adds")
    assert outputs(repo) == [(0, d) for d in range(4)] and outputs(repo, "visit_sum") == []
    assert repo.get("added", instrument="SimCam", visit=0, detector=2, collections=OUT)["value"] == 102.0
    assert repo.get("add_config", {}, collections=OUT)["offset"] == 100.0


def test_failures_exit_1_with_the_resume_command(repo, pipeline):
    result = butler_run(repo, pipeline, "--id", "visit=0..1", "-c", "add:fail_on_detector=2", code=1)
    assert "6 quanta succeeded (0 with nothing to do), 0 skipped, 2 failed, 2 blocked by failures" in result.output
    assert "FAILED add {instrument: 'SimCam'" in result.output
    assert "ValueError: detector 2 is configured to fail" in result.output
    resume = [line for line in result.output.splitlines() if line.startswith("to retry what failed: butler ")]
    assert len(resume) == 1 and resume[0].endswith(" --resume")  # the command line itself: see the subprocess test
    assert outputs(repo) == [(v, d) for v in (0, 1) for d in (0, 1, 3)]



def test_query_provenance_lists_failures_and_the_quantum_of_a_dataset(repo, pipeline):
    import json

    butler_run(repo, pipeline, "--id", "visit=0", "-c", "add:fail_on_detector=2", code=1)
    result = CliRunner().invoke(cli, ["query-provenance", repo.root, "--run", OUT, "--status", "failed",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    (failed,) = json.loads(result.output)
    assert failed["task"] == "add" and failed["status"] == "failed" and failed["run"] == OUT
    assert "detector=2" in failed["data_id"] and "visit=0" in failed["data_id"]
    assert failed["error"].startswith("ValueError: detector 2 is configured to fail")
    assert (failed["inputs"], failed["outputs"]) == (1, 0)
    assert failed["host"] == socket.gethostname() and failed["worker"].startswith("inproc://")  # threads cluster
    assert failed["start"] <= failed["end"] and failed["seconds"] >= 0
    assert failed["start"].endswith("+00:00") and len(failed["start"]) == len("2026-12-01T22:00:00.000+00:00")
    result = CliRunner().invoke(cli, ["query-provenance", repo.root, "--run", OUT, "--status", "succeeded",
                                      "--format", "json"])
    assert sorted((r["task"], r["inputs"], r["outputs"]) for r in json.loads(result.output)) == [("add", 1, 1)] * 3
    result = CliRunner().invoke(cli, ["query-provenance", repo.root, "--run", OUT, "--task", "add"])
    assert result.exit_code == 0 and result.output.count("succeeded") == 3 and result.output.count("failed") == 1
    # The quantum that wrote one dataset, with its input and output counts.
    result = CliRunner().invoke(cli, ["query-provenance", repo.root, "--dataset", "added", "-c", OUT,
                                      "-d", "visit=0", "-d", "detector=1", "--format", "json"])
    assert result.exit_code == 0, result.output
    (made,) = json.loads(result.output)
    assert made["task"] == "add" and made["status"] == "succeeded" and (made["inputs"], made["outputs"]) == (1, 1)
    assert made["dataset"] == str(repo.find_dataset("added", instrument="SimCam", visit=0, detector=1,
                                                    collections=OUT).id)
    # Bad combinations say what to do.
    result = CliRunner().invoke(cli, ["query-provenance", repo.root, "-d", "visit=0"])
    assert result.exit_code == 2 and "give --dataset TYPE" in result.output
    result = CliRunner().invoke(cli, ["query-provenance", repo.root, "--dataset", "added"])
    assert result.exit_code == 2 and "needs the collections to search" in result.output

def test_resume_extend_replace(repo, pipeline):
    butler_run(repo, pipeline, "--id", "visit=1")
    first = {r.data_id["detector"]: r.id for r in repo.query_datasets("added", collections=OUT)}
    result = butler_run(repo, pipeline, "--id", "visit=1..2", code=2)
    assert "error: output run 'u/tester/cli' already exists; pass --resume" in result.stderr
    result = butler_run(repo, pipeline, "--id", "visit=1..2", "--resume")
    assert "4 outputs exist (resume)" in result.output
    assert "5 quanta succeeded (0 with nothing to do), 5 skipped" in result.output
    repo.refresh()
    assert {r.data_id["detector"]: r.id for r in repo.query_datasets("added", collections=OUT,
                                                                    where="visit = 1")} == first
    result = butler_run(repo, pipeline, "--id", "visit=3", "--extend-run")
    assert outputs(repo, "visit_sum") == [(1, None), (2, None), (3, None)]
    result = butler_run(repo, pipeline, "--id", "visit=3", "--extend-run", code=2)
    assert "outputs already exist" in result.stderr and "--clobber-outputs" in result.stderr
    butler_run(repo, pipeline, "--id", "visit=3", "--extend-run", "--clobber-outputs")
    assert outputs(repo, "visit_sum") == [(1, None), (2, None), (3, None)]
    # --replace-run: the run is removed and made again (--dry-run shows every quantum running, removes nothing).
    result = butler_run(repo, pipeline, "--id", "visit=0..1", "--replace-run", "--dry-run")
    assert result.output.splitlines()[2].split() == ["add", "8", "0", "-"]
    assert outputs(repo, "visit_sum") == [(1, None), (2, None), (3, None)]
    butler_run(repo, pipeline, "--id", "visit=0", "--replace-run")
    assert outputs(repo, "visit_sum") == [(0, None)]
    assert repo.verify() == []


def test_skip_existing_in(repo, pipeline):
    butler_run(repo, pipeline, "--id", "visit=0..1", "--tasks", "add")
    argv = ["run", repo.root, pipeline, "-i", "in", "-o", "u/tester/second", "--cluster", "threads:1",
            "--no-progress", "--id", "visit=0..2", "--skip-existing-in", OUT]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert "8 outputs exist in --skip-existing-in collections" in result.output
    assert outputs(repo, "added", "u/tester/second") == [(2, d) for d in range(4)]
    assert outputs(repo, "visit_sum", "u/tester/second") == [(0, None), (1, None), (2, None)]


@pytest.mark.parametrize("args, message", [
    (["--id", "visit=99"], "error: the data query selects nothing"),
    (["--where", "band = 'g'"], "error: the data query selects nothing"),
    (["-c", "add:offest=1"], ("error: add: unknown config field 'offest'; fields: ['fail_on_detector', 'gate', 'log', "
                              "'offset', 'sleep']")),
    (["-c", "add:offset=abc"], "error: add.offset must be float, got 'abc'"),
    (["-c", "nope:x=1"], "error: no task labelled 'nope'"),
    (["--id", "visit"], "Invalid value for '--id'"),
    (["--id", "visit=3..1"], "bad range"),
    (["--where", "visit >"], "error:"),
    (["--tasks", "nope"], "error: unknown task labels or subset"),
    (["--cluster", "mars:2"], "unknown cluster 'mars:2'"),
])
def test_user_errors_exit_2(repo, pipeline, args, message):
    result = butler_run(repo, pipeline, *args, code=2)
    assert message in result.stderr, result.stderr
    assert repo.query_collections(OUT) == []


def test_run_owned_by_somebody_else_exit_2(repo, pipeline, monkeypatch):
    monkeypatch.setenv("BUTLER_USER", "alice")
    repo.register_run(OUT)
    monkeypatch.setenv("BUTLER_USER", "tester")
    for extra in ([], ["--resume"], ["--replace-run"]):
        result = butler_run(repo, pipeline, *extra, code=2)
        assert "belongs to 'alice', not to you ('tester')" in result.stderr
    assert repo.query_collections(OUT) == [OUT]


def test_missing_pipeline_file_exit_2(repo, tmp_path):
    result = CliRunner().invoke(cli, ["run", repo.root, str(tmp_path / "nope.yaml"), "-i", "in", "-o", OUT])
    assert result.exit_code == 2 and "does not exist" in result.stderr


def test_real_subprocess_on_a_local_cluster(repo, pipeline):
    """``python -m butler.cli run`` with worker processes (spawned: the entry point must be import-safe);
    a failure exits 1 and prints the command that resumes the run."""
    env = dict(os.environ, BUTLER_USER="tester")
    args = [repo.root, pipeline, "-i", "in", "-o", OUT, "--id", "visit=2^3 detector=0..1", "-c",
            "add:fail_on_detector=1", "--cluster", "local:1", "--no-progress"]
    result = subprocess.run([sys.executable, "-m", "butler.cli", "run", *args], capture_output=True, text=True,
                            env=env, timeout=120, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "2 quanta succeeded (0 with nothing to do), 0 skipped, 2 failed, 2 blocked by failures" in result.stdout
    assert "dashboard: http" in result.stderr
    assert f"to retry what failed: butler run {' '.join(args)} --resume".replace(
        "visit=2^3 detector=0..1", "'visit=2^3 detector=0..1'") in result.stdout
    assert outputs(repo) == [(2, 0), (3, 0)]


# -- the dashboard of clusters started by butler run -------------------------------------------------
def listening_hosts(port: int) -> set[str]:
    """The addresses this process listens on at ``port`` (what the OS bound, not what a link says)."""
    import psutil

    return {c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def dashboard_port(client) -> int:
    from urllib.parse import urlsplit

    return urlsplit(client.dashboard_link).port


@pytest.mark.parametrize("spec", ["local:1", "threads:1"])
def test_dashboard_listens_on_this_machine_only_unless_asked(spec):
    with make_client(spec) as client:
        assert listening_hosts(dashboard_port(client)) == {"127.0.0.1"}
        assert dashboard_link(client) == f"http://127.0.0.1:{dashboard_port(client)}/status"  # the link works
    with make_client(spec, dashboard_address="0.0.0.0:0") as client:  # asked for: every interface
        assert listening_hosts(dashboard_port(client)) == {"0.0.0.0"}


def test_run_passes_the_dashboard_address(repo, pipeline):
    result = butler_run(repo, pipeline, "--id", "visit=0", "--dashboard-address", "127.0.0.1:0")
    assert "dashboard: http://127.0.0.1:" in result.stderr
    result = CliRunner().invoke(cli, ["run", "--help"])
    assert "--dashboard-address HOST:PORT" in result.output and "[default: 127.0.0.1:0]" in result.output
