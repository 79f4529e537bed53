"""Pipelines in YAML and Python: config overrides, connections that do not line up, unpicklable configs."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from butler import Butler
from orchestration import DaskExecutor, Input, Output, Pipeline, PipelineError, Planner, Task
from orchestration.testing import AddTask, SumTask, UnpicklableConfigTask, make_metrics_repo

T = "orchestration.testing"


# -- tasks whose connections do not line up --------------------------------------------------------
class Empty:
    pass


class AddBadDims(Task):
    """Declares 'added' with other dimensions than AddTask does."""

    dimensions = ("instrument", "visit")

    @dataclass
    class Config:
        pass

    added = Input(dataset_type="added", dimensions=("instrument", "visit"), multiple=True)
    out = Output(dataset_type="bad_out", dimensions=("instrument", "visit"))


class OutputNotQuantum(Task):
    dimensions = ("instrument", "visit")

    @dataclass
    class Config:
        pass

    source = Input(dataset_type="metrics_in", dimensions=("instrument", "visit", "detector"), multiple=True)
    out = Output(dataset_type="per_detector", dimensions=("instrument", "visit", "detector"))


class CycleA(Task):
    dimensions = ("instrument", "visit")

    @dataclass
    class Config:
        pass

    b = Input(dataset_type="b_out", dimensions=("instrument", "visit"))
    a = Output(dataset_type="a_out", dimensions=("instrument", "visit"))


class CycleB(Task):
    dimensions = ("instrument", "visit")

    @dataclass
    class Config:
        pass

    a = Input(dataset_type="a_out", dimensions=("instrument", "visit"))
    b = Output(dataset_type="b_out", dimensions=("instrument", "visit"))


class SecondAdder(AddTask):
    """Also produces 'added'."""


class ReadsUnknown(Task):
    dimensions = ("instrument", "visit", "detector")

    @dataclass
    class Config:
        pass

    src = Input(dataset_type="no_such_type", dimensions=("instrument", "visit", "detector"))
    out = Output(dataset_type="unknown_out", dimensions=("instrument", "visit", "detector"))


class ReadsMetricsAsVisit(Task):
    """Declares metrics_in with dimensions that differ from the registered ones."""

    dimensions = ("instrument", "visit")

    @dataclass
    class Config:
        pass

    src = Input(dataset_type="metrics_in", dimensions=("instrument", "visit"))
    out = Output(dataset_type="mv_out", dimensions=("instrument", "visit"))


# -- construction ----------------------------------------------------------------------------------
def test_python_pipeline_orders_tasks_by_dependency():
    pipe = Pipeline("sum of adds").add_task("sum", SumTask).add_task("add", AddTask, offset=2.5)
    defs = pipe.task_defs()
    assert [d.label for d in defs] == ["add", "sum"]
    assert defs[0].config.offset == 2.5 and defs[0].config.fail_on_detector == -1
    assert defs[0].class_path == "orchestration.testing.AddTask"
    assert defs[0].config_digest == pipe.task_defs()[0].config_digest  # stable
    assert defs[0].config_digest != Pipeline().add_task("add", AddTask).task_defs()[0].config_digest


def test_yaml_pipeline_with_configs_and_subsets(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""
        description: add then sum
        tasks:
          add:
            class: {T}.AddTask
            config: {{offset: 3, sleep: 0.0}}
          sum: {T}.SumTask
        subsets:
          first: [add]
    """))
    pipe = Pipeline.from_yaml(path)
    assert pipe.description == "add then sum"
    assert pipe.labels == ["add", "sum"]
    add = pipe.task_defs()[0]
    assert add.config.offset == 3.0 and isinstance(add.config.offset, float)  # int coerced to float
    assert pipe.subset("first").labels == ["add"]
    assert pipe.subset(["sum"]).labels == ["sum"]
    round_trip = Pipeline.from_dict(pipe.to_dict())
    assert [d.config_digest for d in round_trip.task_defs()] == [d.config_digest for d in pipe.task_defs()]


@pytest.mark.parametrize("text, message", [
    ("description: nothing\n", "needs a 'tasks' mapping"),
    ("tasks:\n  add: {config: {offset: 1}}\n", "task 'add' has no 'class'"),
    (f"tasks:\n  add: {T}.NoSuchTask\n", "cannot import task class"),
    ("tasks:\n  add: no_such_module.Task\n", "cannot import task class"),
    (f"tasks:\n  add: {__name__}.Empty\n", "is not a Task subclass"),
    (f"tasks:\n  add: {T}.AddTask\nsubsets:\n  s: [add, nope]\n", "subset 's' names unknown tasks ['nope']"),
    (f"tasks:\n  add:\n    class: {T}.AddTask\n    config: {{offest: 1}}\n", "unknown config field 'offest'"),
])
def test_bad_yaml_pipelines(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        Pipeline.from_yaml(path)


def test_config_override_unknown_field_names_valid_fields():
    pipe = Pipeline().add_task("add", AddTask)
    with pytest.raises(PipelineError) as info:
        pipe.configure("add", offest=2.0)
    message = str(info.value)
    assert "add: unknown config field 'offest'" in message
    for name in ("fail_on_detector", "log", "offset", "sleep"):
        assert name in message
    with pytest.raises(PipelineError, match=r"no task labelled 'nope'; labels: \['add'\]"):
        pipe.configure("nope", offset=1)


@pytest.mark.parametrize("field, value, message", [
    ("offset", "abc", "add.offset must be float, got 'abc'"),
    ("fail_on_detector", "4", "add.fail_on_detector must be int, got '4'"),
    ("fail_on_detector", 4.5, "add.fail_on_detector must be int, got 4.5"),
    ("log", 3, "add.log must be str, got 3"),
    ("offset", True, "add.offset must be float, got True"),
])
def test_config_override_wrong_type(field, value, message):
    with pytest.raises(PipelineError, match=message.replace(".", r"\.")):
        Pipeline().add_task("add", AddTask).configure("add", **{field: value})


def test_command_line_overrides():
    pipe = Pipeline().add_task("add", AddTask).add_task("sum", SumTask)
    pipe.apply_overrides(["add:offset=2.5", "add: fail_on_detector = 4", "add:log=/tmp/x"])
    add = pipe.task_defs()[0].config
    assert (add.offset, add.fail_on_detector, add.log) == (2.5, 4, "/tmp/x")
    assert pipe.configure("add", fail_on_detector=4.0).task_defs()[0].config.fail_on_detector == 4
    with pytest.raises(PipelineError, match="must look like label:field=value"):
        pipe.apply_overrides(["offset=2"])
    with pytest.raises(PipelineError, match="must be float"):
        pipe.apply_overrides(["add:offset=[1, 2]"])


def test_duplicate_label():
    with pytest.raises(PipelineError, match="already has a task labelled 'add'"):
        Pipeline().add_task("add", AddTask).add_task("add", SumTask)


def test_unknown_subset():
    pipe = Pipeline().add_task("add", AddTask)
    with pytest.raises(PipelineError, match="unknown task labels or subset"):
        pipe.subset("nope")


# -- graphs that do not line up ---------------------------------------------------------------
def test_dimension_mismatch_between_tasks():
    pipe = Pipeline().add_task("add", AddTask).add_task("bad", AddBadDims)
    with pytest.raises(PipelineError) as info:
        pipe.task_defs()
    message = str(info.value)
    assert "'added' is declared differently by 'add'" in message
    assert "['instrument', 'visit', 'detector']" in message and "'bad' (['instrument', 'visit']" in message


def test_output_dimensions_must_be_the_quantum_dimensions():
    with pytest.raises(PipelineError, match="output 'out' has dimensions .*'detector'.* but the task's quanta have"):
        Pipeline().add_task("o", OutputNotQuantum).task_defs()


def test_cycle():
    with pytest.raises(PipelineError, match=r"the pipeline has a cycle: (a -> b -> a|b -> a -> b)"):
        Pipeline().add_task("a", CycleA).add_task("b", CycleB).task_defs()


def test_two_producers():
    with pytest.raises(PipelineError, match="'added' is produced by both 'add' and 'add2'"):
        Pipeline().add_task("add", AddTask).add_task("add2", SecondAdder).task_defs()


@pytest.fixture
def repo(tmp_path):
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler, visits=2, detectors=3)
    return Butler(butler.root, writeable=True)


def test_unknown_input_dataset_type(repo):
    with pytest.raises(PipelineError, match="u: input dataset type 'no_such_type' is not registered in .* and no "
                                            "task of the pipeline produces it"):
        Planner(repo).build(Pipeline().add_task("u", ReadsUnknown), inputs="in", output_run="u/tester/x")


def test_connection_differs_from_registered_dataset_type(repo):
    with pytest.raises(PipelineError, match=r"mv: connection 'src' declares 'metrics_in' as \['instrument', 'visit'\]"
                                            r"/StructuredData but the repository has it as \['instrument', 'visit', "
                                            r"'detector'\]"):
        Planner(repo).build(Pipeline().add_task("mv", ReadsMetricsAsVisit), inputs="in", output_run="u/tester/x")


def test_unpicklable_config_fails_before_anything_is_written(repo):
    from distributed import Client

    plan = Planner(repo).build(Pipeline().add_task("locked", UnpicklableConfigTask), inputs="in",
                               output_run="u/tester/locked")
    assert len(plan.to_run()) == 6
    with Client(processes=False, dashboard_address=":0") as client, pytest.raises(PipelineError) as info:
        DaskExecutor(client).run(plan, repo)
    message = str(info.value)
    assert message.startswith("locked: the task orchestration.testing.UnpicklableConfigTask with its config "
                              "cannot be pickled")
    assert "lock" in message
    assert repo.query_collections("u/tester/locked") == []  # nothing half-written
