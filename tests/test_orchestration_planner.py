"""The planner: quanta and their inputs, empty queries, saved plans, explanations and restart semantics."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from butler import Butler
from butler.errors import ConflictError, RunOwnershipError
from orchestration import DaskExecutor, Pipeline, Plan, Planner, PlanningError, prepare_run
from orchestration.testing import AddTask, SplitTask, add_sum, make_metrics_repo

OUT = "u/tester/out"


@pytest.fixture(scope="module")
def client():
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=4, dashboard_address=":0") as c:
        yield c


@pytest.fixture
def repo(tmp_path):
    """SimCam, visits 0..4, metrics_in of 9 detectors each in the run 'in'; a writeable Butler."""
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler)
    return Butler(butler.root, writeable=True)



def execute(client, butler, plan, **kwargs):
    report = DaskExecutor(client, progress=False, **kwargs).run(plan, butler)
    assert report.ok, report.summary()
    return report


def outputs(butler, dataset_type, run=OUT):
    return {(r.data_id["visit"], r.data_id.get("detector")): r
            for r in butler.query_datasets(dataset_type, collections=run)}


# -- quanta and inputs -------------------------------------------------------------------------
def test_quanta_counts_and_inputs(repo):
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit < 4")
    counts = plan.counts()
    assert counts["add"]["run"] == 36 and counts["sum"]["run"] == 4
    assert sum(c["skip"] for c in counts.values()) == 0
    adds = {(q.data_id["visit"], q.data_id["detector"]): q for q in plan.quanta if q.task == "add"}
    for q in plan.quanta:
        if q.task == "add":
            (ref,) = q.inputs["source"]
            assert ref.dataset_type.name == "metrics_in" and ref.run == "in" and ref.data_id == q.data_id
            assert q.upstream == ()
            assert q.outputs["added"].run == OUT and q.outputs["added"].data_id == q.data_id
        else:
            visit = q.data_id["visit"]
            refs = q.inputs["added"]
            assert sorted(r.data_id["detector"] for r in refs) == list(range(9))  # all detectors of the visit
            assert {r.data_id["visit"] for r in refs} == {visit}
            assert {r.id for r in refs} == {adds[(visit, d)].outputs["added"].id for d in range(9)}
            assert set(q.upstream) == {adds[(visit, d)].index for d in range(9)}
    assert plan.task_def("add").config.offset == 1.0
    with pytest.raises(KeyError, match="no task 'nope'"):
        plan.task_def("nope")


def test_data_id_and_bind(repo):
    plan = Planner(repo).build(add_sum(), inputs="in", output_run=OUT, where="visit IN (:v) AND detector > :d",
                               bind={"v": [1, 3], "d": 6})
    assert sorted((q.data_id["visit"], q.data_id["detector"]) for q in plan.quanta if q.task == "add") == \
        [(1, 7), (1, 8), (3, 7), (3, 8)]
    assert [len(q.inputs["added"]) for q in plan.quanta if q.task == "sum"] == [2, 2]
    plan = Planner(repo).build(add_sum(), inputs="in", output_run=OUT, data_id={"visit": 2})
    assert plan.counts()["add"]["run"] == 9


def test_where_that_selects_nothing(repo):
    with pytest.raises(PlanningError) as info:
        Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit > 100")
    message = str(info.value)
    assert "the data query selects nothing" in message and "visit > 100" in message
    assert "['in']" in message and "metrics_in" in message
    with pytest.raises(PlanningError, match="selects nothing"):
        Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="band = 'g'")
    assert repo.query_collections(OUT) == []


def test_plan_save_load_summary_explain(repo, tmp_path):
    plan = Planner(repo).build(add_sum(offset=5.0), inputs=["in"], output_run=OUT, where="visit < 2")
    path = str(tmp_path / "plan.pkl.gz")
    plan.save(path)
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip
    loaded = Plan.load(path)
    assert loaded.output_run == OUT and loaded.input_collections == ["in"] and loaded.where == "visit < 2"
    assert [d.label for d in loaded.tasks] == ["add", "sum"] and loaded.task_def("add").config.offset == 5.0
    assert len(loaded.quanta) == len(plan.quanta) == 20
    for a, b in zip(plan.quanta, loaded.quanta):
        assert (a.index, a.task, a.data_id, a.upstream, a.status) == (b.index, b.task, b.data_id, b.upstream, b.status)
        ids = lambda refs: {k: [r.id for r in v] for k, v in refs.items()}
        assert ids(a.inputs) == ids(b.inputs)
        assert {k: r.id for k, r in a.outputs.items()} == {k: r.id for k, r in b.outputs.items()}
    assert set(loaded.init_outputs) == {"add", "sum"}

    summary = plan.summary()
    lines = summary.splitlines()
    assert lines[0].split() == ["task", "run", "skip", "reasons"]
    assert lines[2].split() == ["add", "18", "0", "-"] and lines[3].split() == ["sum", "2", "0", "-"]
    assert "output run: u/tester/out; inputs: in" in summary

    text = plan.explain("sum", visit=1)
    assert text.startswith("sum {instrument: 'SimCam', visit: 1")
    assert ": RUN; inputs [added: 9]" in text and "outputs [total: visit_sum]" in text
    assert len(plan.explain("add", {"visit": 0})) > 0 and plan.explain("add", visit=0).count("\n") == 8
    assert "no quantum of 'add' matches {'visit': 9}" in plan.explain("add", visit=9)
    (tmp_path / "junk.gz").write_bytes(__import__("gzip").compress(__import__("pickle").dumps([1, 2])))
    with pytest.raises(TypeError, match="does not hold a Plan"):
        Plan.load(str(tmp_path / "junk.gz"))


def test_missing_inputs_skip_with_reason(repo):
    (ref,) = repo.query_datasets("metrics_in", collections="in", where="visit = 0 AND detector = 3")
    repo.remove([ref])
    # A visit with no inputs at all is not selected; one missing detector only drops that quantum.
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit = 0")
    assert plan.counts()["add"]["run"] == 8
    (s,) = [q for q in plan.quanta if q.task == "sum"]
    assert len(s.inputs["added"]) == 8


# -- restarts ----------------------------------------------------------------------------------------
def test_existing_run_needs_resume_or_extend(repo, client):
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit < 2")
    execute(client, repo, plan)
    with pytest.raises(ConflictError) as info:
        Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit < 2")
    assert "output run 'u/tester/out' already exists; pass --resume" in str(info.value)
    assert "--extend-run" in str(info.value)
    # --extend-run: adding new quanta is fine, finding existing outputs is a conflict.
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit = 3", extend_run=True)
    assert plan.counts()["add"]["run"] == 9
    with pytest.raises(ConflictError, match="outputs already exist in 'u/tester/out'; use --resume .* or "
                                            "--clobber-outputs"):
        Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit < 3", extend_run=True)


def count_statements(butler, func):
    engine = butler.registry.db.engine
    statements = []

    def listener(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", listener)
    try:
        result = func()
    finally:
        sa.event.remove(engine, "before_cursor_execute", listener)
    return result, statements


def test_resume_skips_complete_quanta_with_bulk_lookups(repo, client):
    execute(client, repo, Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit < 2"))
    done = outputs(repo, "added")
    assert len(done) == 18

    def build(where):
        return Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where=where, resume=True)

    build("visit < 5")  # warm the caches (dataset types, collections)
    small, small_sql = count_statements(repo, lambda: build("visit < 3"))
    large, large_sql = count_statements(repo, lambda: build("visit < 5"))
    assert len(large.quanta) > len(small.quanta)
    assert len(small_sql) == len(large_sql), (small_sql, large_sql)  # one lookup per dataset type, not per quantum

    counts = large.counts()
    assert (counts["add"]["run"], counts["add"]["skip"], counts["sum"]["run"], counts["sum"]["skip"]) == (27, 18, 3, 2)
    skipped = [q for q in large.quanta if q.status == "skip"]
    assert {q.reason for q in skipped} == {"outputs exist (resume)"}
    for q in skipped:
        if q.task == "add":
            assert q.outputs["added"].id == done[(q.data_id["visit"], q.data_id["detector"])].id
    assert "18 outputs exist (resume)" in large.summary()
    assert "SKIP (outputs exist (resume))" in large.explain("add", visit=0, detector=0)

    report = execute(client, repo, large)
    assert (report.succeeded, report.skipped) == (30, 20)
    after = outputs(repo, "added")
    assert len(after) == 45 and all(after[k].id == done[k].id for k in done)  # nothing redone
    assert repo.get("visit_sum", instrument="SimCam", visit=4, collections=OUT)["value"] == \
        sum(40 + d + 1 for d in range(9))
    # Everything done: a further resume plans nothing and the executor does nothing.
    final = build("visit < 5")
    assert final.to_run() == [] and execute(client, repo, final).succeeded == 0
    assert repo.verify() == []


def test_clobber_outputs_redoes_complete_quanta(repo, client):
    execute(client, repo, Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit < 2"))
    before = outputs(repo, "added")
    plan = Planner(repo).build(add_sum(offset=1.0), inputs=["in"], output_run=OUT, where="visit < 2",
                               extend_run=True, clobber_outputs=True)
    assert plan.counts()["add"]["run"] == 18
    execute(client, repo, plan)
    after = outputs(repo, "added")
    assert set(after) == set(before) and not {r.id for r in after.values()} & {r.id for r in before.values()}
    assert repo.verify() == []


def test_partial_outputs_need_clobber(repo, client):
    pipe = Pipeline().add_task("split", SplitTask)
    execute(client, repo, Planner(repo).build(pipe, inputs=["in"], output_run=OUT, where="visit = 1"))
    (high,) = repo.query_datasets("split_high", collections=OUT, where="detector = 4")
    repo.remove([high])
    with pytest.raises(ConflictError) as info:
        Planner(repo).build(pipe, inputs=["in"], output_run=OUT, where="visit = 1", resume=True)
    message = str(info.value)
    assert message.startswith("split {instrument: 'SimCam', ") and "visit: 1" in message and "detector: 4" in message
    assert "only some outputs exist (['low'] of ['high', 'low'])" in message and "--clobber-outputs" in message

    (low,) = repo.query_datasets("split_low", collections=OUT, where="detector = 4")
    plan = Planner(repo).build(pipe, inputs=["in"], output_run=OUT, where="visit = 1", resume=True,
                               clobber_outputs=True)
    counts = plan.counts()["split"]
    assert (counts["run"], counts["skip"]) == (1, 8)
    (q,) = plan.to_run()
    assert q.data_id["detector"] == 4 and [r.id for r in q.context["clobber"]] == [low.id]
    assert "RUN (removes 1 existing output(s) first: --clobber-outputs)" in plan.explain("split", detector=4)
    execute(client, repo, plan)
    new_low = repo.query_datasets("split_low", collections=OUT, where="detector = 4")
    assert len(new_low) == 1 and new_low[0].id != low.id
    assert len(repo.query_datasets("split_high", collections=OUT)) == 9
    assert len(repo.query_datasets("split_low", collections=OUT)) == 9
    assert repo.verify() == []


def test_skip_existing_in_reuses_outputs_of_another_collection(repo, client):
    execute(client, repo, Planner(repo).build(Pipeline().add_task("add", AddTask), inputs=["in"],
                                              output_run="u/tester/first", where="visit < 3"))
    first = outputs(repo, "added", "u/tester/first")
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run=OUT, where="visit < 4",
                               skip_existing_in=["u/tester/first"])
    counts = plan.counts()
    assert (counts["add"]["run"], counts["add"]["skip"], counts["sum"]["run"]) == (9, 27, 4)
    assert "27 outputs exist in --skip-existing-in collections" in plan.summary()
    sums = {q.data_id["visit"]: q for q in plan.quanta if q.task == "sum"}
    assert {r.run for r in sums[0].inputs["added"]} == {"u/tester/first"}
    assert {r.run for r in sums[3].inputs["added"]} == {OUT}
    execute(client, repo, plan)
    assert len(outputs(repo, "added")) == 9  # only visit 3 was redone in the new run
    assert repo.get("visit_sum", instrument="SimCam", visit=0, collections=OUT)["value"] == \
        sum(repo.get(first[(0, d)])["value"] for d in range(9))


def test_output_run_owned_by_somebody_else(repo, client, monkeypatch):
    monkeypatch.setenv("BUTLER_USER", "alice")
    repo.register_run("u/alice/run")
    monkeypatch.setenv("BUTLER_USER", "tester")
    for kwargs in ({}, {"resume": True}, {"extend_run": True}):
        with pytest.raises(RunOwnershipError) as info:
            Planner(repo).build(add_sum(), inputs=["in"], output_run="u/alice/run", **kwargs)
        assert "belongs to 'alice', not to you ('tester')" in str(info.value)
    assert isinstance(info.value, PermissionError)
    # A plan made by alice cannot be executed by tester either.
    monkeypatch.setenv("BUTLER_USER", "alice")
    plan = Planner(repo).build(add_sum(), inputs=["in"], output_run="u/alice/run", resume=True, where="visit = 0")
    monkeypatch.setenv("BUTLER_USER", "tester")
    fresh = Butler(repo.root, writeable=True)
    with pytest.raises(RunOwnershipError):
        prepare_run(plan, fresh)
    assert {"add_config", "added"}.isdisjoint(t.name for t in fresh.query_dataset_types())  # nothing written


def test_output_that_is_not_a_run(repo):
    repo.register_collection("u/tester/chain", "CHAINED")
    with pytest.raises(PlanningError, match="exists and is a CHAINED collection, not a RUN"):
        Planner(repo).build(add_sum(), inputs=["in"], output_run="u/tester/chain")


# -- every registry backend -----------------------------------------------------------------------
def test_plan_execute_resume_on_every_backend(repo_factory, client):
    butler = repo_factory()
    make_metrics_repo(butler, visits=3, detectors=4)
    butler = Butler(butler.root, writeable=True)
    plan = Planner(butler).build(add_sum(), inputs=["in"], output_run=OUT, where="visit < 2")
    assert plan.counts()["add"]["run"] == 8 and plan.counts()["sum"]["run"] == 2
    report = execute(client, butler, plan)
    assert report.succeeded == 10
    plan = Planner(butler).build(add_sum(), inputs=["in"], output_run=OUT, resume=True)
    counts = plan.counts()
    assert (counts["add"]["run"], counts["add"]["skip"], counts["sum"]["run"], counts["sum"]["skip"]) == (4, 8, 1, 2)
    execute(client, butler, plan)
    sums = {r.data_id["visit"]: butler.get(r) for r in butler.query_datasets("visit_sum", collections=OUT)}
    assert {v: s["value"] for v, s in sums.items()} == {v: sum(10 * v + d + 1 for d in range(4)) for v in range(3)}
    assert len(butler.query_provenance(run=OUT, status="succeeded")) == 15
    assert butler.verify() == []
