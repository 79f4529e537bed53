"""A quantum whose second output cannot be written leaves none of its outputs on disk
(as before the change: the worker removed every output it had put in place)."""

from __future__ import annotations

from typing import Any

import pytest

from butler import Butler
from orchestration import Pipeline, Planner
from orchestration._execute import ButlerConfig, QuantumFailure, execute_quantum
from orchestration._executor import prepare_run
from orchestration.testing import SplitTask, files_on_disk, make_metrics_repo, registered_files

OUT = "u/tester/out"


class HalfBrokenSplitTask(SplitTask):
    """SplitTask whose second output ("high") cannot be serialised."""

    def run(self, source: dict[str, Any]) -> dict[str, Any]:
        return {"low": {"value": 1.0}, "high": {"value": object()}}


def test_failed_quantum_leaves_no_output_file(tmp_path):
    butler = Butler.create(tmp_path / "repo")
    make_metrics_repo(butler, visits=1, detectors=1)
    repo = Butler(butler.root, writeable=True)
    plan = Planner(repo).build(Pipeline().add_task("split", HalfBrokenSplitTask), inputs=["in"], output_run=OUT)
    prepare_run(plan, repo)
    (quantum,) = plan.quanta
    assert list(quantum.outputs) == ["low", "high"]
    repo.intend_writes(list(quantum.outputs.values()))
    config = ButlerConfig(repo.root, (OUT, "in"))
    with pytest.raises(QuantumFailure):
        execute_quantum(config, plan.tasks[0], quantum)
    assert files_on_disk(repo.root, OUT) == registered_files(repo, OUT)
