"""The ``docker`` runner for real: Airflow's DockerOperator, built by
components.orchestration.operators from a stage of dvc.yaml, runs that stage's command
line in the component image, in the run's folder, through podman's Docker-compatible
API socket."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from components.orchestration import operators
from components.orchestration.runs import prepare_training_run, run_folder
from components.orchestration.stages import load_stages
from tests.infra.conftest import TASK, podman


@pytest.fixture
def docker_runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """PAR_RUNNER=docker with a private runs root; returns the runs root."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("PAR_RUNNER", "docker")
    monkeypatch.setenv("PAR_RUNS_ROOT", str(runs))
    return runs


def test_docker_operator_mounts_the_runs_root_at_the_same_path(docker_runner, monkeypatch):
    monkeypatch.setenv("VK_ICD_FILENAMES", "/host/only/lvp_icd.json")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("PAR_DOCKER_NETWORK", "par")
    op = operators.stage("encode")
    assert type(op).__name__ == "DockerOperator"
    assert op.image == operators.IMAGE
    (mount,) = op.mounts
    assert mount["Source"] == mount["Target"] == str(docker_runner) and mount["Type"] == "bind"
    assert op.user == f"{os.getuid()}:{os.getgid()}"
    assert op.network_mode == "par"
    assert op.environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert op.environment["PAR_RUN_FOLDER"] == "{{ run_folder(run_id) }}"
    assert "VK_ICD_FILENAMES" not in op.environment  # the image has its own Vulkan driver
    assert op.device_requests is None  # a GPU only where PAR_DOCKER_GPUS says there is one
    # the stage's own command line, run in the run's folder
    assert op.entrypoint == ["sh", "-c"] and op.command[0].startswith('cd "$PAR_RUN_FOLDER" && exec python -m')


@pytest.mark.timeout(3000)  # may be the first to ask for the image (a build from scratch)
def test_docker_operator_runs_validate_through_podmans_docker_api(
    image, podman_socket, container_dataset, docker_runner, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", podman_socket)
    monkeypatch.setattr(operators, "IMAGE", image)
    run_id = "manual__infra_test"
    prepare_training_run({"profile": "smoke", "tasks": [TASK], "demos_per_task": 1}, run_id)
    folder = Path(run_folder(run_id))
    assert folder.parent == docker_runner
    shutil.copytree(container_dataset, folder / "data" / "demos" / TASK)

    from airflow.sdk import DAG, task

    with DAG("docker_runner_test", schedule=None, user_defined_macros=operators.MACROS):
        tasks = task(lambda: [TASK], task_id="tasks")()
        mapped = operators.stage("validate", tasks)
    value = TASK  # what the mapped task instance of TASK runs
    for f in mapped.expand_input.value["command"].callables:
        value = f(value)
    line = load_stages()["validate"].command(TASK)
    assert value == operators.in_folder(line)
    op = operators.component("validate", line)
    op.environment["PAR_RUN_FOLDER"] = str(folder)  # what the template renders for this run
    op.execute(context={})

    results = json.loads((folder / "data" / "validation" / TASK / "results.json").read_text())
    assert results["success"] is True, results
    assert (folder / "data" / "validation_docs" / TASK / "index.html").is_file()
    # auto_remove="success": the operator removed its container
    assert podman("container", "exists", op.container["Id"], check=False).returncode == 1
