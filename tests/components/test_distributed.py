"""pretrain/train on several processes (torchrun, DDP with gloo on this CPU): the same
loss curve as one process, resume after a kill, one MLflow run, and bad input refused.

Every rank draws the whole global batch from its own generator, seeded alike, and
trains on its rows: the ranks' rows together are exactly the batch one process draws,
so the curves differ only by the order of float sums (DDP's mean of two gradients
against one sum): measured 1.2e-7 at most over 20 steps. The test allows 1e-4
relative; a batch that was only statistically the same would differ by 1e-2 or more
from the first step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.errors import ComponentError
from components.formats.params import load_params
from components.ml.fit import FitPaths, fit
from tests.cli import run_module
from tests.components.conftest import write_params
from tests.harness.processes import spawn, stop_tree, tagged

# Tiny and short: 20 steps of 4 windows, 2 per rank, one thread per process (see the
# single-process resume test in test_training.py).
TWENTY_STEPS = {"steps": 20, "batch_size": 4, "checkpoint_every": 10, "log_every": 1, "warmup_steps": 2, "threads": 1}


def _train_argv(params: Path, encoded: Path, pretrained: Path, out: Path) -> list[str]:
    return [
        "--params", str(params), "--encoded", str(encoded), "--pretrained", str(pretrained),
        "--out", str(out / "policy"), "--checkpoints", str(out / "ckpt"), "--metrics", str(out / "metrics.json"),
        "--plots", str(out / "plots"), "--no-progress",
    ]  # fmt: skip


def _start(argv: list[str], log: Path, key: str):
    """``python -m components.train ARGV`` in a session of its own, tracked under its own pipeline key."""
    env = {**os.environ, "PAR_PIPELINE_KEY": key}
    return spawn([sys.executable, "-m", "components.train", *argv], env, log)


def _run(argv: list[str], log: Path, key: str) -> None:
    proc = _start(argv, log, key)
    try:
        assert proc.wait(600) == 0, log.read_text()[-4000:]
    finally:
        stop_tree(proc)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "ckpt" / "history.jsonl").read_text().splitlines()]


def _stage_runs(metrics: Path) -> list:
    """Every MLflow run under the pipeline run of the stage run that ``metrics`` names."""
    import mlflow

    run = mlflow.get_run(json.loads(metrics.read_text())["mlflow_run_id"])
    parent = run.data.tags["mlflow.parentRunId"]
    return mlflow.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'", output_format="list"
    )


@pytest.fixture(scope="module")
def two_process_params(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    return write_params(folder / "params.yaml", train={**TWENTY_STEPS, "nproc": 2})


@pytest.fixture(scope="module")
def two_process_run(two_process_params, encoded, pretrained) -> Path:
    """An unkilled 2-process training run of 20 steps, launched by the stage's own command line."""
    out = two_process_params.parent / "unkilled"
    _run(_train_argv(two_process_params, encoded, pretrained, out), out.parent / "unkilled.log", "ddp-unkilled")
    return out


def test_two_processes_follow_one_process_loss_curve(two_process_run, encoded, pretrained, tmp_path):
    log = (two_process_run.parent / "unkilled.log").read_text()
    assert "launching 2 ranks" in log and "train done: 20 steps" in log
    single = write_params(tmp_path / "params.yaml", train={**TWENTY_STEPS, "nproc": 1})
    paths = FitPaths(encoded, tmp_path / "pol", tmp_path / "ckpt", tmp_path / "m.json", tmp_path / "plots", pretrained)
    fit("train", load_params(single), single, paths, progress=False)
    one, two = _losses(tmp_path), _losses(two_process_run)
    assert len(one) == len(two) == 20
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=0)
    # rank 0 alone opened an MLflow run and wrote the outputs
    (run,) = _stage_runs(two_process_run / "metrics.json")
    assert run.info.status == "FINISHED" and run.data.params["train.nproc"] == "2"
    assert (two_process_run / "policy" / "model" / "model.safetensors").is_file()
    state = torch.load(two_process_run / "ckpt" / "last" / "training_state.pt", weights_only=True)
    assert state["step"] == 20 and len(state["ranks"]) == 2  # every rank's data RNG and sampler state


def test_a_killed_two_process_run_resumes_to_the_same_weights(two_process_run, two_process_params, encoded, pretrained):
    out = two_process_params.parent / "killed"
    argv = _train_argv(two_process_params, encoded, pretrained, out)
    log = out.parent / "killed.log"
    proc = _start(argv, log, "ddp-killed")
    try:
        deadline = time.time() + 600
        while not (out / "ckpt" / "000010").exists():
            assert proc.poll() is None and time.time() < deadline, "training ended before the kill:\n" + log.read_text()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's group; its ranks run in sessions of their own
        proc.wait()
        deadline = time.time() + 30
        while tagged(proc.par_tag) and time.time() < deadline:
            time.sleep(0.2)
        assert not tagged(proc.par_tag), "a rank outlived the killed torchrun"
    finally:
        stop_tree(proc)
    assert not (out / "policy").exists() and not (out / "metrics.json").exists()
    first_run = torch.load(out / "ckpt" / "000010" / "training_state.pt", weights_only=True)["run_id"]

    _run(argv, log, "ddp-killed")
    assert "resuming train from step" in log.read_text()
    (run,) = _stage_runs(out / "metrics.json")  # one run, not one a rank nor one a start
    assert run.info.run_id == first_run and run.info.status == "FINISHED"
    a = load_file(two_process_run / "policy" / "model" / "model.safetensors")
    b = load_file(out / "policy" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize(
    ("train", "named"),
    [
        ({"nproc": 0}, "train.nproc"),
        ({"nproc": 2, "batch_size": 5}, "batch_size 5 does not split over nproc 2"),
    ],
)
def test_bad_process_counts_are_refused_by_name(tmp_path, train, named):
    params = write_params(tmp_path / "params.yaml", train=train)
    out = tmp_path / "run"
    result = run_module("components.train", *_train_argv(params, tmp_path / "enc", tmp_path / "pre", out))
    assert result.returncode == 2 and named in result.stderr, result.stderr
    assert not out.exists()


def test_several_processes_need_torchrun(tmp_path):
    params = write_params(tmp_path / "params.yaml", train={"nproc": 2})
    paths = FitPaths(tmp_path / "enc", tmp_path / "policy", tmp_path / "ckpt", tmp_path / "m.json", tmp_path)
    with pytest.raises(ComponentError, match=r"train\.nproc is 2, but this process was not started by torchrun"):
        fit("train", load_params(params), params, paths)
    assert not (tmp_path / "ckpt").exists()


def test_kubernetes_pods_of_pretrain_and_train_ask_for_nproc_gpus(tmp_path, monkeypatch):
    """The pod's GPU count is rendered from the run's params when the task runs (the
    trigger form may set train.nproc); evaluate keeps one GPU."""
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("PAR_RUNNER", "kubernetes")
    monkeypatch.setenv("PAR_RUNS_ROOT", str(tmp_path / "runs"))
    from airflow.sdk import DAG

    from components.orchestration import operators
    from components.orchestration.runs import prepare_training_run

    prepare_training_run({"profile": "smoke", "train_nproc": 4}, "run4")
    with DAG("gpus", schedule=None, user_defined_macros=operators.MACROS) as dag:
        pods = {name: operators.stage(name, gpu=True) for name in ("pretrain", "train")}
    for pod in pods.values():
        pod.render_template_fields({"run_id": "run4", "dag": dag})
    assert pods["train"].container_resources.limits == {"nvidia.com/gpu": "4"}
    assert pods["pretrain"].container_resources.limits == {"nvidia.com/gpu": "1"}  # pretrain.nproc left at 1
    assert "dshm" in [v.name for v in pods["train"].volumes]  # NCCL's shared memory
    assert operators.stage("encode").container_resources.limits is None
