"""The DAG files import cleanly, stay thin, and have the structure the pipeline needs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: v[-500:] for k, v in bag.import_errors.items()},
       "heavy": [m for m in ("torch", "diffusers", "mani_skill", "sapien", "mlflow") if m in sys.modules],
       "dags": {}}
for dag in bag.dags.values():
    out["dags"][dag.dag_id] = {
        "tasks": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
        "mapped": sorted(t.task_id for t in dag.tasks if type(t).__name__ == "MappedOperator"),
        "params": sorted(dag.params.keys()),
        "schedule": str(getattr(dag.timetable, "_expression", "") or getattr(dag.timetable, "expression", "")),
        "catchup": dag.catchup,
        "retries": sorted({t.retries for t in dag.tasks}),
    }
print(json.dumps(out))
"""


def parse(tmp_path: Path, runner: str = "local") -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_VAR_PAR_RUNNER": runner,
    }
    result = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "dags")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("runner", ["local", "docker", "kubernetes"])
def test_dags_import_without_errors_or_heavy_modules(tmp_path, runner):
    bag = parse(tmp_path, runner)
    assert bag["errors"] == {}
    assert bag["heavy"] == []  # no torch, diffusers, ManiSkill or MLflow at parse time
    assert set(bag["dags"]) == {"par_training", "par_nightly_eval"}


def test_training_dag_structure(tmp_path):
    dag = parse(tmp_path)["dags"]["par_training"]
    t = dag["tasks"]
    chain = ["collect", "validate", "encode", "pretrain", "train"]
    for upstream, downstream in itertools.pairwise(chain):
        assert downstream in t[upstream], (upstream, downstream)
    assert {"evaluate", "score"} <= set(t["train"])
    assert "merge" in t["evaluate"] and "gate" in t["merge"] and "gate" in t["score"]
    assert {"collect", "validate", "evaluate", "merge"} <= set(dag["mapped"])
    assert {"tasks", "demos_per_task", "model_size", "train_steps", "episodes", "min_wilson_low"} <= set(dag["params"])
    assert dag["catchup"] is False and min(dag["retries"]) >= 2


def test_nightly_dag_structure(tmp_path):
    dag = parse(tmp_path)["dags"]["par_nightly_eval"]
    assert dag["schedule"] == "0 3 * * *" and dag["catchup"] is False
    assert "check_regression" in dag["tasks"]["evaluate_champion"]
    assert "evaluate_champion" in dag["mapped"]


def test_unknown_runner_is_an_import_error(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW_VAR_PAR_RUNNER": "ssh"}
    result = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "dags")], capture_output=True, text=True, env=env)
    errors = json.loads(result.stdout.strip().splitlines()[-1])["errors"]
    assert errors and all("par_runner is 'ssh'" in e for e in errors.values())
