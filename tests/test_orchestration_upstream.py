"""Pipelines over an upstream (issue 13): planned against a remote repository (a real `butler serve`),
inputs fetched verified into the local repository before execution, outputs and provenance written
locally, the upstream unchanged; `butler run --upstream` from the command line."""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from butler import Butler
from butler.cli import cli
from butler.testing import served_repository, snapshot_repo
from orchestration import DaskExecutor, Planner
from orchestration.testing import add_sum, make_metrics_repo

OUT = "u/tester/out"


@pytest.fixture(scope="module")
def upstream_repo(tmp_path_factory: pytest.TempPathFactory) -> Butler:
    root = tmp_path_factory.mktemp("upstream") / "repo"
    butler = Butler.create(root)
    make_metrics_repo(butler, visits=3, detectors=3)
    return Butler(butler.root, collections="in")


@pytest.fixture(scope="module")
def server(upstream_repo: Butler):
    with served_repository(upstream_repo.root) as served:
        yield served.url


@pytest.fixture(scope="module")
def cluster_client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        yield client


def test_a_pipeline_reads_its_inputs_from_the_upstream_and_writes_locally(upstream_repo, server, cluster_client,
                                                                          tmp_path):
    before = snapshot_repo(upstream_repo)
    mine = Butler(Butler.create(tmp_path / "mine").root, writeable=True, upstream=server)
    plan = Planner(mine).build(add_sum(offset=0.5), inputs=["in"], output_run=OUT, where="visit < 2")
    assert len([q for q in plan.quanta if q.task == "add"]) == 6
    report = DaskExecutor(cluster_client).run(plan, mine)
    assert report.ok, report.summary()
    here = Butler(mine.root, collections=[OUT, "in"])  # without the upstream: everything is local now
    assert len(here.query_datasets("metrics_in", collections="in")) == 6  # only the inputs the plan read
    added = here.query_datasets("added", collections=OUT)
    assert len(added) == 6
    assert here.get("added", instrument="SimCam", visit=1, detector=2)["value"] == 12.5
    provenance = here.provenance(added[0])
    assert provenance is not None and provenance["status"] == "succeeded"
    assert here.verify() == []
    assert snapshot_repo(upstream_repo) == before  # nothing written upstream
    # Debugging the run from afar: its provenance through `butler serve` reads as locally.
    with served_repository(mine.root) as served:
        remote = Butler(served.url, collections=OUT)
        assert remote.query_provenance(run=OUT) == here.query_provenance(run=OUT)
        assert remote.query_provenance(run=OUT, status="failed") == []
        assert remote.provenance(added[0]) == provenance
        assert remote.recorded_inputs(added) == here.recorded_inputs(added)
    # Ids of the inputs are the upstream's.
    ref = here.find_dataset("metrics_in", instrument="SimCam", visit=0, detector=0, collections="in")
    assert ref == upstream_repo.find_dataset("metrics_in", instrument="SimCam", visit=0, detector=0)


def test_butler_run_with_upstream_on_the_command_line(server, tmp_path):
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(textwrap.dedent("""
        tasks:
          add: {class: orchestration.testing.AddTask, config: {offset: 1.0}}
          sum: orchestration.testing.SumTask
    """))
    root = Butler.create(tmp_path / "mine").root
    result = CliRunner().invoke(cli, ["run", root, str(pipeline), "--upstream", server, "-i", "in", "-o", OUT,
                                      "--id", "visit=2", "--cluster", "local:1", "--no-progress"])
    assert result.exit_code == 0, result.output
    here = Butler(root, collections=OUT)
    assert len(here.query_datasets("added")) == 3
    total = here.get("visit_sum", instrument="SimCam", visit=2)
    assert total["n"] == 3 and total["value"] == pytest.approx(sum(20 + d + 1.0 for d in range(3)))
