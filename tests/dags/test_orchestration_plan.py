"""A DAG run's folder and params: run-scoped params from a profile and the trigger form,
and the nightly evaluation's params (no Airflow run needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.orchestration.runs import (
    FORM_FIELDS,
    prepare_nightly_run,
    prepare_training_run,
    run_folder,
    run_params,
)


@pytest.fixture(autouse=True)
def _runs_root(tmp_path, monkeypatch):
    monkeypatch.setenv("PAR_RUNS_ROOT", str(tmp_path / "runs"))


def test_form_fields_at_their_defaults_keep_the_profiles_values():
    form_defaults = {"demos_per_task": 300, "train_steps": 2000, "episodes": 125, "tasks": ["PushCube-v1"]}
    data = run_params({"profile": "smoke", **form_defaults, "pretrain_steps": 7})
    assert data["tasks"] == ["PushCube-v1", "PickCube-v1", "StackCube-v1"]  # the profile's
    assert data["collect"]["demos_per_task"] == 2 and data["train"]["steps"] == 6
    assert data["pretrain"]["steps"] == 7  # changed in the form: the form wins


def test_tasks_chosen_in_the_form_keep_only_their_own_per_task_entries(tmp_path, monkeypatch):
    import components.orchestration.runs as runs
    from components.formats.params import ParamsError, materialize

    repo = tmp_path / "repo"
    (repo / "profiles").mkdir(parents=True)
    (repo / "params.yaml").write_text((runs.REPO / "params.yaml").read_text())
    view = {"eye": [0.3, 0, 0.4], "target": [0, 0, 0]}
    profile = {
        "tasks": ["PushCube-v1", "StackCube-v1"],
        "collect": {"demos_by_task": {"StackCube-v1": 600}, "camera_by_task": {"StackCube-v1": view}},
    }
    (repo / "profiles" / "big.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setattr(runs, "REPO", repo)
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


def test_prepare_writes_a_validated_params_file_in_the_runs_own_folder(tmp_path):
    a_id, b_id = "manual__2026-01-01T00:00:00+00:00", "manual__2026-01-01T00:00:01+00:00"
    assert prepare_training_run({"profile": "ci-airflow"}, a_id) == ["PushCube-v1"]
    prepare_training_run({"profile": "ci-airflow", "train_steps": 4}, b_id)
    a, b = Path(run_folder(a_id)), Path(run_folder(b_id))
    assert a != b and a.parent == b.parent == tmp_path / "runs"
    assert yaml.safe_load((b / "params.yaml").read_text())["train"]["steps"] == 4
    assert yaml.safe_load((a / "params.yaml").read_text())["train"]["steps"] == 3  # the profile's


def test_a_bad_form_value_fails_the_first_step_by_name():
    from components.formats.params import ParamsError

    with pytest.raises(ParamsError, match=r"model\.size"):
        prepare_training_run({"model_size": "huge"}, "bad")


def test_every_form_field_sets_a_params_key_and_says_what_it_does():
    from components.formats.params import Params

    for name, field in FORM_FIELDS.items():
        section = Params.model_fields[field.path[0] if field.path[0] != "validate" else "validate_"]
        assert section is not None, name
        assert len(field.description) > 30, name


@pytest.mark.parametrize("run_id", [".", "..", "", "..."])
def test_a_run_id_never_names_a_folder_outside_the_runs_root(tmp_path, run_id):
    with pytest.raises(ValueError, match="cannot name a run folder"):
        run_folder(run_id)
    for safe in ("../x", "../..", "/"):  # slashes become underscores: one folder in the root
        assert Path(run_folder(safe)).parent == tmp_path / "runs"


def test_nightly_run_evaluates_the_champion_on_the_profiles_seeds():
    items = prepare_nightly_run({"profile": "ci-airflow"}, "scheduled__x")
    params = yaml.safe_load((Path(run_folder("nightly-scheduled__x")) / "params.yaml").read_text())
    assert params["tasks"] == ["PushCube-v1"] and params["evaluate"]["episodes"] == 2
    assert items == [{"task": "PushCube-v1", "model_uri": "models:/par-policy@champion"}]
