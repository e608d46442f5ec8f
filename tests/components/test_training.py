"""pretrain/train: checkpoints, resume after a kill, MLflow runs, the baseline."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from components.formats.params import load_params
from components.formats.policy import load_policy
from components.ml.fit import FitPaths, fit
from tests.cli import Completed, run_module
from tests.components.conftest import write_params


def _train_cmd(params, encoded, pretrained, tmp, name):
    return [
        sys.executable,
        "-m",
        "components.train",
        "--params",
        str(params),
        "--encoded",
        str(encoded),
        "--pretrained",
        str(pretrained),
        "--out",
        str(tmp / f"{name}_policy"),
        "--checkpoints",
        str(tmp / f"{name}_ckpt"),
        "--metrics",
        str(tmp / f"{name}.json"),
        "--plots",
        str(tmp / "plots"),
        "--no-progress",
    ]


def _train_here(cmd: list[str]) -> Completed:
    """The command line ``cmd`` (``python -m components.train ...``) run in this process
    (the process that is killed is a real one); the thread count is put back after."""
    threads = torch.get_num_threads()
    try:
        return run_module(*cmd[2:])
    finally:
        torch.set_num_threads(threads)


def test_train_writes_a_loadable_policy(encoded, pretrained, smoke_params, tmp_path):
    params = load_params(smoke_params)
    paths = FitPaths(
        encoded, tmp_path / "policy", tmp_path / "ckpt", tmp_path / "m.json", tmp_path / "plots", pretrained
    )
    metrics = fit("train", params, smoke_params, paths)
    policy = load_policy(tmp_path / "policy")
    assert policy.tasks == params.tasks and policy.model.config.proprio_dim == 12  # 9 joints + the goal slot
    assert (tmp_path / "plots" / "train_loss.png").is_file()
    curve = (tmp_path / "plots" / "train_loss.csv").read_text().splitlines()  # the DVC plot's data
    assert curve[0] == "step,loss,frame_loss,action_loss" and len(curve) == 1 + 3  # logged every 2 of 6 steps
    assert sorted(p.name for p in (tmp_path / "ckpt" / "frames").iterdir()) == ["step000003.png", "step000006.png"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name[0].isdigit()) == ["000003", "000006"]
    assert os.readlink(tmp_path / "ckpt" / "last") == "000006"
    import mlflow

    run_info = mlflow.get_run(metrics["mlflow_run_id"])
    assert run_info.data.tags["par.stage"] == "train" and "mlflow.parentRunId" in run_info.data.tags
    assert "loss" in run_info.data.metrics and run_info.data.params["model.d_model"] == "128"


def test_killed_training_resumes_to_the_same_weights(encoded, pretrained, tmp_path, caplog):
    params = write_params(
        tmp_path / "params.yaml",
        # One thread: with two, the math libraries may split a product differently when the
        # machine is busy, and the reference and resumed runs then differ in the 6th digit.
        train={"steps": 12, "batch_size": 4, "checkpoint_every": 6, "log_every": 3, "warmup_steps": 2, "threads": 1},
    )
    reference = _train_here(_train_cmd(params, encoded, pretrained, tmp_path, "ref"))
    assert reference.returncode == 0, reference.stderr

    cmd = _train_cmd(params, encoded, pretrained, tmp_path, "kill")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "kill_ckpt" / "000006").exists():
            assert proc.poll() is None and time.time() < deadline, "training ended before the kill"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (tmp_path / "kill_policy").exists()
    first_run = torch.load(tmp_path / "kill_ckpt" / "last" / "training_state.pt", weights_only=True)["run_id"]
    with caplog.at_level(logging.INFO, logger="components"):
        resumed = _train_here(cmd)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming train from step 6" in caplog.text
    assert json.loads((tmp_path / "kill.json").read_text())["mlflow_run_id"] == first_run

    a = load_file(tmp_path / "ref_policy" / "model" / "model.safetensors")
    b = load_file(tmp_path / "kill_policy" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_a_run_killed_before_its_first_checkpoint_is_not_left_running(encoded, pretrained, tmp_path):
    import mlflow

    params = write_params(
        tmp_path / "params.yaml",
        train={"steps": 12, "batch_size": 4, "checkpoint_every": 12, "log_every": 3, "warmup_steps": 2, "threads": 1},
    )
    cmd = _train_cmd(params, encoded, pretrained, tmp_path, "early")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    record = tmp_path / "early_ckpt" / "run.json"
    try:
        deadline = time.time() + 300
        while not record.exists():  # the MLflow run is open, no checkpoint yet
            assert proc.poll() is None and time.time() < deadline, "training ended before the kill"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = json.loads(record.read_text())["run_id"]
    assert mlflow.get_run(killed).info.status == "RUNNING"  # what the kill leaves behind
    again = _train_here(cmd)
    assert again.returncode == 0, again.stderr
    assert mlflow.get_run(killed).info.status == "FAILED"
    assert "killed before its first checkpoint" in mlflow.get_run(killed).data.tags["par.ended"]
    finished = json.loads((tmp_path / "early.json").read_text())["mlflow_run_id"]
    assert finished != killed and mlflow.get_run(finished).info.status == "FINISHED"


def test_two_identical_pretrain_runs_write_identical_bytes(encoded, tmp_path):
    """The same params and seed give the same model file, byte for byte, so DVC sees the
    same hash and train keeps its checkpoints (one thread: see the resume test)."""
    params_path = write_params(
        tmp_path / "params.yaml",
        pretrain={"steps": 4, "batch_size": 4, "checkpoint_every": 2, "log_every": 2, "warmup_steps": 1, "threads": 1},
    )
    params = load_params(params_path)
    for run in ("a", "b"):
        paths = FitPaths(encoded, tmp_path / run / "model", tmp_path / run / "ckpt", tmp_path / run / "m.json",
                         tmp_path / run / "plots")  # fmt: skip
        fit("pretrain", params, params_path, paths, progress=False)
    a, b = (tmp_path / run / "model" / "model" / "model.safetensors" for run in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()


def test_behaviour_cloning_baseline_trains(encoded, tmp_path):
    params_path = write_params(tmp_path / "params.yaml", model={"kind": "bc"})
    params = load_params(params_path)
    skipped = fit(
        "pretrain",
        params,
        params_path,
        FitPaths(encoded, tmp_path / "pre", tmp_path / "pc", tmp_path / "p.json", tmp_path),
    )
    assert skipped == {"skipped": True} and (tmp_path / "pre" / "SKIPPED.json").is_file()
    # dvc.yaml's pretrain stage declares its checkpoint folder: `dvc repro` fails if it is missing
    assert (tmp_path / "pc" / "SKIPPED.json").is_file()
    fit(
        "train",
        params,
        params_path,
        FitPaths(encoded, tmp_path / "policy", tmp_path / "ckpt", tmp_path / "m.json", tmp_path),
    )
    policy = load_policy(tmp_path / "policy")
    assert type(policy.model).__name__ == "BCPolicy"


def test_missing_pretrained_model_is_a_clear_error(encoded, smoke_params, tmp_path):
    result = run_module(*_train_cmd(smoke_params, encoded, tmp_path / "nowhere", tmp_path, "x")[2:])
    assert result.returncode == 2 and "pretrained model" in result.stderr and "run pretrain first" in result.stderr


def test_weights_held_for_the_whole_run_reach_the_policy_as_pretraining_left_them(encoded, pretrained, tmp_path):
    """train.freeze_pretrained_steps as long as the run: every tensor taken from video
    pretraining is in the policy bit for bit (a frozen backbone, a probe of the prior)."""
    from par.checkpoint import load_pretrained

    # No EMA: its average of equal weights rounds in the last bit.
    train = {"steps": 4, "batch_size": 4, "checkpoint_every": 4, "log_every": 2, "warmup_steps": 1}
    params = write_params(tmp_path / "params.yaml", train=train | {"freeze_pretrained_steps": 4, "ema_decay": 0.0})
    paths = FitPaths(encoded, tmp_path / "pol", tmp_path / "ckpt", tmp_path / "m.json", tmp_path / "plots", pretrained)
    fit("train", load_params(params), params, paths, progress=False)
    policy = load_file(tmp_path / "pol" / "model" / "model.safetensors")
    source = load_file(pretrained / "model" / "model.safetensors")
    taken = load_pretrained(load_policy(tmp_path / "pol").model, source).taken_names()
    assert any(name.startswith("transformer.") for name in taken)
    for name in taken:
        rows = policy[name].shape[0]
        torch.testing.assert_close(policy[name], source[name][:rows], rtol=0, atol=0, msg=name)
