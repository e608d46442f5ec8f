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
import airflow.sdk
def no_metadata_at_parse_time(*args, **kwargs):
    raise RuntimeError("a DAG file asked Airflow's metadata database while it was parsed")
airflow.sdk.Variable.get = no_metadata_at_parse_time
airflow.sdk.BaseHook.get_connection = no_metadata_at_parse_time
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
out = {"errors": {k: v[-500:] for k, v in bag.import_errors.items()},
       "heavy": [m for m in ("torch", "diffusers", "mani_skill", "sapien", "mlflow") if m in sys.modules],
       "dags": {}}
def defaults_problem(dag):
    try:
        dag.params.validate()  # what a trigger with the form's defaults is checked against
    except Exception as exc:
        return str(exc)
    return ""
for dag in bag.dags.values():
    out["dags"][dag.dag_id] = {
        "defaults_problem": defaults_problem(dag),
        "tasks": {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks},
        "mapped": sorted(t.task_id for t in dag.tasks if type(t).__name__ == "MappedOperator"),
        "params": sorted(dag.params.keys()),
        "undescribed": sorted(k for k, p in dag.params.items() if len(p.description or "") < 30),
        "schedule": str(getattr(dag.timetable, "_expression", "") or getattr(dag.timetable, "expression", "")),
        "catchup": dag.catchup,
        "retries": sorted({t.retries for t in dag.tasks}),
        "env": {t.task_id: sorted(getattr(t, "env", None) or {}) for t in dag.tasks if hasattr(t, "env")},
    }
print(json.dumps(out))
"""


def parse(tmp_path: Path, runner: str = "local") -> dict:
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PAR_RUNNER": runner,
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


def test_training_dag_is_the_pipeline_a_user_thinks_in(tmp_path):
    """The graph holds the stages and one first step that writes the run's params;
    no plumbing tasks; every field of the trigger form says what it does."""
    dag = parse(tmp_path)["dags"]["par_training"]
    t = dag["tasks"]
    chain = ["prepare", "collect", "validate", "encode", "pretrain", "train"]
    for upstream, downstream in itertools.pairwise(chain):
        assert downstream in t[upstream], (upstream, downstream)
    assert "videos" in t["prepare"] and "validate_videos" in t["videos"] and "encode" in t["validate_videos"]
    assert {"evaluate", "score"} <= set(t["train"])
    assert "gate" in t["evaluate"] and "gate" in t["score"]
    assert set(t) == {*chain, "videos", "validate_videos", "evaluate", "score", "gate"}
    assert set(dag["mapped"]) == {"collect", "validate", "evaluate"}
    assert {"tasks", "demos_per_task", "model_size", "train_steps", "episodes", "min_wilson_low"} <= set(dag["params"])
    assert dag["undescribed"] == [] and dag["defaults_problem"] == ""  # the form's defaults are valid
    assert dag["catchup"] is False and min(dag["retries"]) >= 2


def test_nightly_dag_structure(tmp_path):
    dag = parse(tmp_path)["dags"]["par_nightly_eval"]
    assert dag["schedule"] == "0 3 * * *" and dag["catchup"] is False
    assert "check_regression" in dag["tasks"]["evaluate_champion"]
    assert "evaluate_champion" in dag["mapped"] and dag["undescribed"] == []
    assert "PAR_ALERT_WEBHOOK" in dag["env"]["check_regression"]  # the alert webhook, resolved when the run starts


def test_unknown_runner_is_an_import_error(tmp_path):
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "PAR_RUNNER": "ssh"}
    result = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "dags")], capture_output=True, text=True, env=env)
    errors = json.loads(result.stdout.strip().splitlines()[-1])["errors"]
    assert errors and all("PAR_RUNNER is 'ssh'" in e for e in errors.values())
