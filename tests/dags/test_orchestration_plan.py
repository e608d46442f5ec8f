"""The run plan the DAGs execute: run-scoped params from a profile and the trigger form,
seed shards, and the nightly evaluation's params (no Airflow run needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.orchestration import build_plan, nightly_plan, run_params


@pytest.fixture(autouse=True)
def _runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("AIRFLOW_VAR_PAR_RUNS_ROOT", str(tmp_path / "runs"))


def test_form_fields_at_their_defaults_keep_the_profiles_values():
    form_defaults = {"demos_per_task": 300, "train_steps": 2000, "episodes": 125, "tasks": ["PushCube-v1"]}
    data = run_params({"profile": "smoke", **form_defaults, "pretrain_steps": 7})
    assert data["tasks"] == ["PushCube-v1", "PickCube-v1", "StackCube-v1"]  # the profile's
    assert data["collect"]["demos_per_task"] == 2 and data["train"]["steps"] == 6
    assert data["pretrain"]["steps"] == 7  # changed in the form: the form wins


def test_tasks_chosen_in_the_form_keep_only_their_own_per_task_entries(tmp_path, monkeypatch):
    import components.orchestration as orchestration
    from components.params import ParamsError, materialize

    repo = tmp_path / "repo"
    (repo / "profiles").mkdir(parents=True)
    (repo / "params.yaml").write_text((orchestration.REPO / "params.yaml").read_text())
    view = {"eye": [0.3, 0, 0.4], "target": [0, 0, 0]}
    profile = {
        "tasks": ["PushCube-v1", "StackCube-v1"],
        "collect": {"demos_by_task": {"StackCube-v1": 600}, "camera_by_task": {"StackCube-v1": view}},
    }
    (repo / "profiles" / "big.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setattr(orchestration, "REPO", repo)
    assert run_params({"profile": "big"})["collect"]["demos_by_task"] == {"StackCube-v1": 600}
    data = run_params({"profile": "big", "tasks": ["PickCube-v1"]})
    assert data["tasks"] == ["PickCube-v1"]
    assert data["collect"]["demos_by_task"] == {} and data["collect"]["camera_by_task"] == {}
    materialize(data)  # valid: no count for a task the run does not have
    (repo / "profiles" / "typo.yaml").write_text(
        yaml.safe_dump({**profile, "collect": {"demos_by_task": {"Stackcube-v1": 9}}})
    )
    typo = run_params({"profile": "typo", "tasks": ["PushCube-v1", "StackCube-v1"]})
    with pytest.raises(ParamsError, match="Stackcube-v1"):  # a misspelt name is not pruned away
        materialize(typo)


def test_unknown_profile_is_an_error_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"profile 'nope'.*ci-airflow"):
        run_params({"profile": "nope"})


def test_plan_writes_a_validated_params_file_in_the_runs_own_folder(tmp_path):
    a = build_plan("local", "python", {"profile": "ci-airflow"}, "manual__2026-01-01T00:00:00+00:00")
    b = build_plan("local", "python", {"profile": "ci-airflow", "train_steps": 4}, "manual__2026-01-01T00:00:01+00:00")
    assert a["run_folder"] != b["run_folder"] and a["run_folder"].startswith(str(tmp_path / "runs"))
    assert yaml.safe_load(Path(b["run_folder"], "params.yaml").read_text())["train"]["steps"] == 4
    assert all(a["run_folder"] in command for command in [*a["collect"], *a["evaluate"], a["gate"]])


def test_single_shard_evaluation_writes_the_result_and_skips_merge():
    plan = build_plan("local", "python", {"profile": "smoke"}, "one-shard")
    assert plan["merge"] == [] and len(plan["evaluate"]) == 3
    assert all("--metrics" in command and "/data/eval/" in command for command in plan["evaluate"])


def test_shards_cover_every_episode_once():
    plan = build_plan("local", "python", {"profile": "ci-airflow", "eval_shards": 2, "episodes": 5}, "sharded")
    episodes = [int(c.split("--episodes ")[1].split()[0]) for c in plan["evaluate"]]
    seeds = [int(c.split("--seed-start ")[1].split()[0]) for c in plan["evaluate"]]
    assert episodes == [3, 2] and seeds == [1_000_000, 1_000_003]
    assert len(plan["merge"]) == 1 and "eval_shards/PushCube-v1/1" in plan["merge"][0]


def test_nightly_plan_evaluates_the_champion_on_the_profiles_seeds():
    plan = nightly_plan("local", "python", "scheduled__x", "https://hooks.example/alert", {"profile": "ci-airflow"})
    params = yaml.safe_load(Path(plan["run_folder"], "params.yaml").read_text())
    assert params["tasks"] == ["PushCube-v1"] and params["evaluate"]["episodes"] == 2
    assert len(plan["evaluate"]) == 1 and "models:/par-policy@champion" in plan["evaluate"][0]
    assert "--webhook-url https://hooks.example/alert" in plan["check"]
