"""MLflow tracking: a stage's run nests under its pipeline's run, and a DVC experiment's
runs carry the experiment's name."""

from __future__ import annotations

from components.integrations.tracking import stage_run


def test_a_dvc_experiments_runs_carry_its_name(tmp_path, monkeypatch):
    import mlflow

    params = tmp_path / "params.yaml"
    params.write_text("tasks: [PushCube-v1]\n")
    monkeypatch.delenv("PAR_PIPELINE_KEY", raising=False)  # as under `dvc exp run`
    monkeypatch.setenv("DVC_EXP_NAME", "tiny-no-ar")  # what `dvc exp run -n tiny-no-ar` sets
    with stage_run("train", params) as run:
        run_id = run.info.run_id
    with stage_run("score", params) as run:
        other = run.info.run_id
    train, score = mlflow.get_run(run_id), mlflow.get_run(other)
    assert train.info.run_name == "tiny-no-ar/train" and score.info.run_name == "tiny-no-ar/score"
    assert train.data.tags["par.experiment"] == "tiny-no-ar"
    parent = mlflow.get_run(train.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "tiny-no-ar" and parent.data.tags["par.experiment"] == "tiny-no-ar"
    assert score.data.tags["mlflow.parentRunId"] == parent.info.run_id  # one parent for the experiment


def test_without_an_experiment_runs_are_named_by_stage(tmp_path, monkeypatch):
    import mlflow

    params = tmp_path / "params.yaml"
    params.write_text("tasks: [PickCube-v1]\n")
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    with stage_run("encode", params) as run:
        run_id = run.info.run_id
    found = mlflow.get_run(run_id)
    assert found.info.run_name == "encode" and "par.experiment" not in found.data.tags
