"""The ``butler`` command line: every command through click's CliRunner, plus real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from butler.cli import cli
from butler.cli._options import parse_data_id

HEAVY = ("sqlalchemy", "numpy", "astropy", "dask")


def run(*args: str, input: str | None = None, code: int = 0):
    result = CliRunner().invoke(cli, list(args), input=input)
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


@pytest.fixture
def repo(simcam_repo):
    """The SimCam repo with three 'metrics' datasets in u/tester/run1."""
    butler = simcam_repo
    for visit, detector in [(12, 0), (12, 1), (14, 0)]:
        butler.put({"visit": visit, "detector": detector}, "metrics", instrument="SimCam", visit=visit,
                   detector=detector)
    return butler


def dataset_files(root: str) -> list[str]:
    out = []
    for dirpath, _, names in os.walk(root):
        out += [os.path.join(dirpath, n) for n in names if n.startswith("metrics_")]
    return sorted(out)


# -- cheap import, help ------------------------------------------------------------------------
def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from butler.cli import cli\n"
        "try:\n"
        "    cli(['--help'], prog_name='butler')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('HEAVY', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "query-datasets" in out


@pytest.mark.parametrize("command", ["create", "register-instrument", "query-datasets", "query-data-ids",
                                     "query-dimension-records", "query-collections", "query-dataset-types",
                                     "verify", "remove-runs"])
def test_every_command_has_help_with_an_example(command):
    result = run(command, "--help")
    assert "Example:" in result.output
    assert "REPO" in result.output


def test_parse_data_id_converts_ints():
    assert parse_data_id(["instrument=SimCam", "visit=12", "detector=-1"]) == {
        "instrument": "SimCam", "visit": 12, "detector": -1}
    result = run("query-datasets", "somewhere", "metrics", "-d", "visit", code=2)
    assert "key=value" in result.output


# -- create / register ---------------------------------------------------------------------------
def test_create_and_register_instrument(tmp_path):
    root = str(tmp_path / "new")
    assert "created repository" in run("create", root).output
    assert run("register-instrument", root, "SimCam").output.strip() == "registered instrument SimCam"
    run("register-instrument", root, "SimCam")  # same definition again: nothing to do
    out = run("query-dimension-records", root, "detector", "-w", "detector < 2", "-f", "json").output
    assert [r["full_name"] for r in json.loads(out)] == ["S00", "S01"]
    empty = run("query-datasets", root, "raw*")  # no such dataset types: empty, not an error
    assert empty.stdout == "" and "no datasets found" in empty.stderr
    result = run("create", root, code=2)
    assert result.stderr.startswith("error:") and "already holds" in result.stderr
    result = run("register-instrument", root, "SimCm", code=2)
    assert "did you mean" in result.stderr


# -- queries --------------------------------------------------------------------------------------
def test_query_datasets_formats(repo):
    lines = run("query-datasets", repo.root, "metrics").stdout.splitlines()
    assert lines[0].split() == ["type", "run", "instrument", "detector", "visit", "id"]
    assert len(lines) == 2 + 3
    assert lines[2].split()[:5] == ["metrics", "u/tester/run1", "SimCam", "0", "12"]

    out = run("query-datasets", repo.root, "metrics", "-c", "u/tester/run1", "-w", "visit = 12",
              "-d", "detector=1", "--format", "json").stdout
    rows = json.loads(out)
    ref = repo.find_dataset("metrics", instrument="SimCam", visit=12, detector=1)
    assert rows == [{"type": "metrics", "run": "u/tester/run1", "instrument": "SimCam", "detector": 1,
                     "visit": 12, "id": str(ref.id)}]

    csv_lines = run("query-datasets", repo.root, "met*", "--find-all", "-f", "csv", "-d", "visit=14").stdout
    assert csv_lines.splitlines()[0] == "type,run,instrument,detector,visit,id"
    assert len(csv_lines.splitlines()) == 2

    empty = run("query-datasets", repo.root, "metrics", "-w", "visit = 99")
    assert empty.stdout == "" and "no datasets found" in empty.stderr


def test_query_data_ids(repo):
    out = run("query-data-ids", repo.root, "visit", "-d", "instrument=SimCam", "-f", "json").stdout
    assert json.loads(out) == [
        {"instrument": "SimCam", "visit": 12, "band": "r", "physical_filter": "SimCam-r", "day_obs": 20261124},
        {"instrument": "SimCam", "visit": 14, "band": "g", "physical_filter": "SimCam-g", "day_obs": 20261124},
    ]
    out = run("query-data-ids", repo.root, "visit", "detector", "--datasets", "metrics", "-c", "u/tester/run1",
              "-w", "band = 'r'", "-f", "csv").stdout.splitlines()
    assert out[0] == "instrument,detector,visit,band,physical_filter,day_obs"
    assert out[1:] == ["SimCam,0,12,r,SimCam-r,20261124", "SimCam,1,12,r,SimCam-r,20261124"]


def test_query_dimension_records(repo):
    lines = run("query-dimension-records", repo.root, "visit", "-w", "visit.exposure_time > 10").stdout.splitlines()
    assert lines[0].split()[:3] == ["instrument", "id", "physical_filter"]
    assert "region" not in lines[0]
    assert len(lines) == 3 and lines[2].split()[:2] == ["SimCam", "12"]


def test_query_collections_and_dataset_types(repo):
    repo.register_collection("tagged", "TAGGED")
    repo.set_chain("all", ["u/tester/run1", "tagged"])
    rows = json.loads(run("query-collections", repo.root, "-f", "json").stdout)
    assert rows == [
        {"name": "all", "type": "CHAINED", "owner": None, "children": ["u/tester/run1", "tagged"]},
        {"name": "tagged", "type": "TAGGED", "owner": None, "children": None},
        {"name": "u/tester/run1", "type": "RUN", "owner": repo.user, "children": None},  # the DB role on servers
    ]
    lines = run("query-collections", repo.root, "u/*", "--type", "run").stdout.splitlines()
    assert lines[2].split() == ["u/tester/run1", "RUN", repo.user]
    lines = run("query-collections", repo.root, "--type", "CHAINED").stdout.splitlines()
    assert lines[2].split() == ["all", "CHAINED", "u/tester/run1,tagged"]

    lines = run("query-dataset-types", repo.root).stdout.splitlines()
    assert lines[2].split() == ["metrics", "instrument,visit,detector", "StructuredData"]
    assert "no dataset types" in run("query-dataset-types", repo.root, "calexp*").stderr


# -- verify ---------------------------------------------------------------------------------------
def test_verify_detects_corrupt_and_missing_files(repo):
    result = run("verify", repo.root)
    assert result.stdout.strip() == "3 files verified, no problems"
    assert run("verify", repo.root, "-c", "u/tester/run1").stdout.startswith("3 files verified")

    corrupt, missing, _ = dataset_files(repo.root)
    with open(corrupt, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    os.remove(missing)
    result = run("verify", repo.root, code=1)
    problems = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[2:]}
    rel = {os.path.relpath(p, repo.root): kind for p, kind in [(corrupt, "checksum"), (missing, "missing")]}
    assert problems == rel
    assert "2 problem(s) in 3 files" in result.stderr


# -- remove-runs ----------------------------------------------------------------------------------
def test_remove_runs(repo):
    repo.put({"x": 1}, "metrics", instrument="SimCam", visit=12, detector=0, run="u/tester/run2")
    result = run("remove-runs", repo.root, "nothing*", code=1)
    assert "no RUN collection matches" in result.stderr

    result = run("remove-runs", repo.root, "u/tester/*", input="n\n", code=1)
    assert "u/tester/run1  3" in result.stdout and "u/tester/run2  1" in result.stdout
    assert "Remove these 2 run(s) and their 4 dataset(s)?" in result.stdout
    assert repo.query_collections() == ["u/tester/run1", "u/tester/run2"]

    result = run("remove-runs", repo.root, "u/tester/run2", input="y\n")
    assert "removed 1 run(s) and 1 dataset(s)" in result.stdout
    assert repo.query_collections() == ["u/tester/run1"]

    result = run("remove-runs", repo.root, "u/*", "--yes")
    assert "removed 1 run(s) and 3 dataset(s)" in result.stdout
    assert repo.query_collections() == []
    assert dataset_files(repo.root) == []


# -- errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, expected", [
    (["query-datasets", "{root}", "calexp"], "dataset type 'calexp' is not registered"),
    (["query-datasets", "{root}", "metrics", "-c", "nope"], "collection 'nope' does not exist"),
    (["query-data-ids", "{root}", "visit", "-d", "visit=abc"], "visit must be an integer"),
    (["query-dimension-records", "{root}", "vist"], "unknown dimension element 'vist'"),
    (["query-datasets", "{root}/missing", "metrics"], "does not exist"),
], ids=["dataset-type", "collection", "data-id", "element", "repo"])
def test_user_errors_are_one_line(repo, args, expected):
    result = run(*[a.format(root=repo.root) for a in args], code=2)
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_bad_where_shows_caret(repo):
    result = run("query-datasets", repo.root, "metrics", "-w", "visit = = 12", code=2)
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: unexpected token '='")
    assert lines[1].strip() == "visit = = 12"
    assert lines[2].index("^") == lines[1].index("= 12")


def test_debug_reraises(repo):
    from butler.errors import DatasetTypeError

    result = CliRunner().invoke(cli, ["--debug", "query-datasets", repo.root, "calexp"])
    assert isinstance(result.exception, DatasetTypeError)


# -- real processes -------------------------------------------------------------------------------
def test_subprocess_end_to_end(repo):
    script = os.path.join(os.path.dirname(sys.executable), "butler")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "butler.cli"]
    proc = subprocess.run([*command, "query-datasets", repo.root, "metrics", "-d", "visit=14", "-f", "json"],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)
    assert (row["visit"], row["detector"], row["run"]) == (14, 0, "u/tester/run1")

    proc = subprocess.run([sys.executable, "-m", "butler.cli", "query-datasets", repo.root, "metrics", "-w",
                           "visit >"], check=False, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "^" in proc.stderr and "Traceback" not in proc.stderr
