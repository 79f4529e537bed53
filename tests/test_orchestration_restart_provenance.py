"""Provenance-aware restarts: a quantum whose outputs exist is complete only if the quantum that wrote
them recorded the inputs it would use now, and none of them is re-made by this execution.

The add -> sum pipeline executes for real on a LocalCluster of worker processes; values are checked,
not only statuses.
"""

from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

import butler._provenance as provenance
import butler.registry._provenance as registry_provenance
from butler import Butler
from butler.cli import cli
from orchestration import DaskExecutor, Pipeline, Planner
from orchestration.testing import AddTask, add_sum, make_metrics_repo

OUT = "u/tester/out"
VISITS, DETECTORS = 2, 3


@pytest.fixture(scope="module")
def cluster_client():
    """Two single-threaded worker processes, shared by the tests of this module."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        yield client


def make_repo(butler: Butler) -> Butler:
    make_metrics_repo(butler, visits=VISITS, detectors=DETECTORS)
    return Butler(butler.root, writeable=True)


@pytest.fixture
def repo(tmp_path):
    return make_repo(Butler.create(tmp_path / "repo"))


def execute(client, butler, plan):
    report = DaskExecutor(client, progress=False).run(plan, butler)
    assert report.ok, report.summary()
    return report


def resume(butler, pipeline=None, **kwargs):
    return Planner(butler).build(pipeline or add_sum(), inputs=["in"], output_run=OUT, resume=True, **kwargs)


def by_key(plan):
    return {(q.task, q.data_id["visit"], q.data_id.get("detector")): q for q in plan.quanta}


def sums(butler):
    return {r.data_id["visit"]: (r.id, butler.get(r)["value"]) for r in butler.query_datasets("visit_sum",
                                                                                             collections=OUT)}


def regenerate_input(butler, visit, detector, value):
    """A new ``metrics_in`` dataset (a new id and value) in place of the one the first execution read."""
    (old,) = butler.query_datasets("metrics_in", collections="in", where=f"visit = {visit} AND detector = {detector}")
    butler.remove([old])
    butler.put({"value": value, "detector": detector}, "metrics_in",
               {"instrument": "SimCam", "visit": visit, "detector": detector}, run="in")


def expected_sum(visit, values=None):
    values = values or {}
    return sum(values.get(d, 10 * visit + d) + 1.0 for d in range(DETECTORS))


@pytest.fixture
def done(repo, cluster_client):
    """The whole pipeline executed once into OUT."""
    execute(cluster_client, repo, Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT))
    assert {v: s for v, (_, s) in sums(repo).items()} == {v: expected_sum(v) for v in range(VISITS)}
    return repo


def test_nothing_changed_resume_skips_everything(done, cluster_client):
    plan = resume(done)
    assert plan.to_run() == []
    assert {q.reason for q in plan.quanta} == {"outputs exist (resume)"}
    before = sums(done)
    assert execute(cluster_client, done, plan).succeeded == 0
    assert sums(done) == before


def test_removed_upstream_output_reruns_downstream_with_the_new_values(done, cluster_client):
    # The scenario of the issue: add re-runs (its output was removed; its input changed meanwhile),
    # so sum must not keep the result it computed from the old add output.
    (added,) = done.query_datasets("added", collections=OUT, where="visit = 0 AND detector = 1")
    done.remove([added])
    regenerate_input(done, 0, 1, 500.0)
    old_sums = sums(done)
    plan = resume(done)
    quanta = by_key(plan)
    assert [(q.task, q.data_id["visit"], q.data_id.get("detector")) for q in plan.to_run()] == \
        [("add", 0, 1), ("sum", 0, None)]
    assert quanta["sum", 0, None].reason == (
        "inputs re-made in this execution: add output added {instrument: 'SimCam', detector: 1, visit: 0} "
        "will be made again")
    assert [r.id for r in quanta["sum", 0, None].context["clobber"]] == [old_sums[0][0]]
    assert quanta["sum", 1, None].status == "skip"
    assert "1 run again, inputs re-made in this execution" in plan.summary()
    assert "RUN (inputs re-made in this execution: add output added" in plan.explain("sum", visit=0)
    assert plan.explain("sum", visit=0).count("removes 1 existing output(s) first") == 1

    execute(cluster_client, done, plan)
    new_sums = sums(done)
    assert new_sums[0][1] == expected_sum(0, {1: 500.0}) != old_sums[0][1]  # recomputed from the new add output
    assert new_sums[1] == old_sums[1]  # untouched
    (new_added,) = done.query_datasets("added", collections=OUT, where="visit = 0 AND detector = 1")
    (sum_ref,) = done.query_datasets("visit_sum", collections=OUT, where="visit = 0")
    assert new_added.id in done.provenance(sum_ref)["inputs"]
    assert done.verify() == []
    # And now nothing is stale: a further resume skips everything.
    assert resume(done).to_run() == []


def test_regenerated_input_reruns_the_chain(done, cluster_client):
    # No output removed: add's input is a new dataset, so add is stale, and so is sum through it.
    old_added = {r.data_id["detector"]: r.id for r in done.query_datasets("added", collections=OUT,
                                                                           where="visit = 1")}
    regenerate_input(done, 1, 2, 70.0)
    plan = resume(done)
    quanta = by_key(plan)
    assert {(q.task, q.data_id["visit"], q.data_id.get("detector")) for q in plan.to_run()} == \
        {("add", 1, 2), ("sum", 1, None)}
    assert quanta["add", 1, 2].reason == \
        "inputs changed: input metrics_in {instrument: 'SimCam', detector: 2, visit: 1} is new; " \
        "1 recorded input(s) no longer used"
    assert [r.id for r in quanta["add", 1, 2].context["clobber"]] == [old_added[2]]
    assert quanta["sum", 1, None].reason.startswith("inputs re-made in this execution: add output added")

    execute(cluster_client, done, plan)
    assert sums(done)[1][1] == expected_sum(1, {2: 70.0})
    assert done.get("added", instrument="SimCam", visit=1, detector=2, collections=OUT)["value"] == 71.0
    assert done.verify() == []
    assert resume(done).to_run() == []


def test_removed_input_reruns_the_sum_without_it(done, cluster_client):
    # metrics_in of one detector is gone: there is no add quantum for it any more, so its old output
    # is not used, and the sum of its visit is computed from the detectors that remain.
    (source,) = done.query_datasets("metrics_in", collections="in", where="visit = 1 AND detector = 0")
    done.remove([source])
    plan = resume(done)
    quanta = by_key(plan)
    assert ("add", 1, 0) not in quanta
    assert [(q.task, q.data_id["visit"]) for q in plan.to_run()] == [("sum", 1)]
    assert quanta["sum", 1, None].reason == "inputs changed: 1 recorded input(s) no longer used"
    assert len(quanta["sum", 1, None].inputs["added"]) == DETECTORS - 1
    execute(cluster_client, done, plan)
    total = done.get("visit_sum", instrument="SimCam", visit=1, collections=OUT)
    assert total["detectors"] == [1, 2] and total["value"] == expected_sum(1) - (10 + 0 + 1.0)
    assert resume(done).to_run() == []


def test_upstream_redone_by_an_earlier_execution(done, cluster_client, tmp_path):
    # add alone re-makes one output; a later full resume finds sum's recorded input gone and a new
    # one in its place, and says so in --dry-run.
    (added,) = done.query_datasets("added", collections=OUT, where="visit = 0 AND detector = 0")
    done.remove([added])
    regenerate_input(done, 0, 0, 300.0)
    execute(cluster_client, done, resume(done, Pipeline().add_task("add", AddTask)))
    old_sums = sums(done)

    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(textwrap.dedent("""
        tasks:
          add: orchestration.testing.AddTask
          sum: orchestration.testing.SumTask
    """))
    result = CliRunner().invoke(cli, ["run", done.root, str(pipeline), "-i", "in", "-o", OUT, "--resume",
                                      "--dry-run", "--cluster", "threads:1", "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:3] for line in lines[2:4]] == [["add", "0", "6"], ["sum", "1", "1"]]
    assert "1 run again, inputs changed" in lines[3]
    (rerun,) = [line for line in lines if line.startswith("sum {instrument: 'SimCam', visit: 0")]
    assert rerun.endswith(": RUN (inputs changed: add output added {instrument: 'SimCam', detector: 0, visit: 0} "
                          "is new; 1 recorded input(s) no longer used; removes 1 existing output(s) first)")
    assert sums(done) == old_sums  # a dry run changes nothing

    execute(cluster_client, done, resume(done))
    assert sums(done)[0][1] == expected_sum(0, {0: 300.0})


def test_outputs_without_provenance_are_complete_unless_inputs_are_remade(repo, cluster_client):
    execute(cluster_client, repo, Planner(repo).build(Pipeline().add_task("add", AddTask), inputs=["in"],
                                                      output_run=OUT))
    repo.register_dataset_type(add_sum().task_defs()[1].task_class.outputs()["total"].to_dataset_type())
    for visit in range(VISITS):  # written by hand: no quantum record
        repo.put({"value": -1.0, "n": 0, "detectors": []}, "visit_sum", instrument="SimCam", visit=visit, run=OUT)
    plan = resume(repo)
    assert plan.to_run() == []
    assert {q.reason for q in plan.quanta if q.task == "sum"} == \
        {"outputs exist (resume); no provenance recorded, inputs not checked"}
    assert "2 outputs exist (resume); no provenance recorded, inputs not checked" in plan.summary()

    # Once an input of one of them is re-made here, it is not complete any more.
    (added,) = repo.query_datasets("added", collections=OUT, where="visit = 1 AND detector = 0")
    repo.remove([added])
    plan = resume(repo)
    assert [(q.task, q.data_id["visit"]) for q in plan.to_run()] == [("add", 1), ("sum", 1)]
    execute(cluster_client, repo, plan)
    values = {v: s for v, (_, s) in sums(repo).items()}
    assert values == {0: -1.0, 1: expected_sum(1)}


def test_recorded_inputs_by_ids_and_by_run(done, monkeypatch):
    # Past the id-list limit the records are selected by run (no parameter limit): the same answer.
    refs = done.query_datasets("added", collections=OUT)
    by_ids = provenance.recorded_inputs(done.registry, refs)
    monkeypatch.setattr(registry_provenance, "_IN_LIST_LIMIT", 2)
    assert provenance.recorded_inputs(done.registry, refs) == by_ids
    assert provenance.recorded_inputs(done.registry, refs[:2]) == by_ids[:2]
    sources = {r.data_id: r for r in done.query_datasets("metrics_in", collections="in")}
    for ref, stored in zip(refs, by_ids):
        source = sources[ref.data_id]
        assert provenance.decode_inputs(stored) == {source.id.hex}
        assert provenance.same_inputs(stored, [source.id]) and not provenance.same_inputs(stored, [ref.id])
    # Not made by a pipeline: no record.
    (hand,) = done.put_many([({"value": 0}, "added", {"instrument": "SimCam", "visit": 0, "detector": 0})],
                            run="u/tester/hand")
    assert provenance.recorded_inputs(done.registry, [hand, refs[0]]) == [None, by_ids[0]]
    assert resume(done).to_run() == []


def test_same_inputs_in_any_order():
    import uuid

    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    stored = provenance.encode_inputs([a, b])
    assert provenance.same_inputs(stored, [a, b]) and provenance.same_inputs(stored, [b, a])
    assert not provenance.same_inputs(stored, [a]) and not provenance.same_inputs(stored, [a, b, c])
    assert not provenance.same_inputs(stored, [a, c])
    assert provenance.same_inputs("[]", []) and not provenance.same_inputs("[]", [a])
    assert provenance.same_inputs(f'[\n"{a.hex}"]', [a])  # any JSON spelling of the list


def test_restart_check_on_every_backend(repo_factory, cluster_client):
    butler = make_repo(repo_factory())
    execute(cluster_client, butler, Planner(butler).build(add_sum(), inputs=["in"], output_run=OUT))
    assert resume(butler).to_run() == []
    regenerate_input(butler, 0, 2, 40.0)
    plan = resume(butler)
    assert {(q.task, q.data_id["visit"]) for q in plan.to_run()} == {("add", 0), ("sum", 0)}
    execute(cluster_client, butler, plan)
    assert sums(butler)[0][1] == expected_sum(0, {2: 40.0})
    assert resume(butler).to_run() == []
