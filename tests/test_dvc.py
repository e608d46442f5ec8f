"""DVC: the pipeline runs with `dvc repro` and re-runs only what changed; data moves
through the S3 remote of the project's own config (an S3-compatible server on loopback)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from components.formats.params import drop_tasks, materialize
from tests.harness.project import project_copy
from tests.harness.servers import mlflow_server, moto_server

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def sh(*cmd: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # stages call `python` of this venv
    result = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PATH": path, **(env or {})}
    )
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def tree_digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_s3_remote_push_wipe_pull_gives_identical_data(tmp_path, servers):
    import boto3

    repo = project_copy(tmp_path)
    data = repo / "data" / "demos" / "Fake-v1"
    data.mkdir(parents=True)
    for i in range(3):
        (data / f"episode_{i}.npz").write_bytes(os.urandom(20_000 + i))
    (data / "manifest.json").write_text(json.dumps({"task": "Fake-v1"}))
    before = tree_digest(data)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with moto_server(tmp_path / "moto") as endpoint:
        boto3.client(
            "s3", endpoint_url=endpoint, **{k.lower(): v for k, v in env.items() if "KEY" in k}, region_name="us-east-1"
        ).create_bucket(Bucket="par-pipeline")
        sh(DVC, "add", "data/demos/Fake-v1", cwd=repo, env=env)
        sh(DVC, "remote", "modify", "--local", "s3", "endpointurl", endpoint, cwd=repo, env=env)
        sh(DVC, "push", "-r", "s3", "data/demos/Fake-v1.dvc", cwd=repo, env=env)
        shutil.rmtree(repo / ".dvc" / "cache")
        shutil.rmtree(data)
        sh(DVC, "pull", "-r", "s3", "data/demos/Fake-v1.dvc", cwd=repo, env=env)
        objects = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).list_objects_v2(Bucket="par-pipeline", Prefix="dvc/")
    assert tree_digest(data) == before
    assert objects["KeyCount"] >= 4  # the files and the directory listing


def test_smoke_pipeline_with_dvc_repro_against_mlflow_server(tmp_path, simulator, servers):
    """The whole pipeline (smoke profile) under `dvc repro`, tracked by a real MLflow server;
    then a change to one stage's parameter re-runs that stage and what follows only.
    PushCube and StackCube (seen from its own camera), 2 episodes each; PickCube runs end
    to end in the Airflow tests' REST run (tests/dags/test_airflow_runs.py)."""
    params = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())
    assert params["tasks"] == ["PushCube-v1", "PickCube-v1", "StackCube-v1"]
    params["tasks"] = ["PushCube-v1", "StackCube-v1"]
    drop_tasks(params, {"PickCube-v1"})
    repo = project_copy(tmp_path, params)
    with mlflow_server(tmp_path / "mlflow") as uri:
        env = {"MLFLOW_TRACKING_URI": uri, "PAR_PIPELINE_KEY": "dvc-smoke"}
        first = sh(DVC, "repro", cwd=repo, env=env).stdout
        for task in params["tasks"]:
            assert f"Running stage 'evaluate@{task}'" in first
            metrics = json.loads((repo / "metrics" / "eval" / f"{task}.json").read_text())
            assert metrics["episodes"] == 2
        gate = json.loads((repo / "metrics" / "gate.json").read_text())
        assert gate["version"] == "1"
        score = json.loads((repo / "metrics" / "score.json").read_text())
        assert score["per_task"]["PushCube-v1"]["episodes"] == 1 and "psnr" in score

        import mlflow

        mlflow.set_tracking_uri(uri)
        runs = mlflow.search_runs(experiment_names=["par"], output_format="list")
        stages = {r.data.tags.get("par.stage") for r in runs}
        assert {"pretrain", "train", "score", "gate"} <= stages
        parents = {r.data.tags.get("mlflow.parentRunId") for r in runs if r.data.tags.get("par.stage")}
        assert len(parents) == 1  # every stage nests under one pipeline run

        params["score"] = {"horizon": 2, "videos": 1}
        (repo / "params.yaml").write_text(yaml.safe_dump(materialize(params)))
        second = sh(DVC, "repro", cwd=repo, env=env).stdout
    assert "Running stage 'score'" in second and "Running stage 'gate'" in second
    for stage in ("collect@PushCube-v1", "validate@PushCube-v1", "encode", "pretrain", "train", "evaluate@PushCube-v1"):
        assert f"Running stage '{stage}'" not in second, stage
    assert json.loads((repo / "metrics" / "score.json").read_text())["horizon"] == 2
    params["collect"]["demos_per_task"] += 1  # a new demo count keeps the video corpus
    (repo / "params.yaml").write_text(yaml.safe_dump(materialize(params)))
    corpus = sh(DVC, "status", "videos", "validate_videos", cwd=repo).stdout
    assert "up to date" in corpus, corpus
    demos = sh(DVC, "status", "collect@PushCube-v1", cwd=repo).stdout
    assert "modified:           collect" in demos, demos
