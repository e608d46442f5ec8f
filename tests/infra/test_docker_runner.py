"""The ``docker`` runner for real: Airflow's DockerOperator, built by
components.orchestration.operator() from a command of the DAG's plan, runs a pipeline
stage in the component image through podman's Docker-compatible API socket."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from components import orchestration
from tests.infra.conftest import TASK, podman


@pytest.fixture
def docker_runner(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """par_runner=docker with a private runs root; returns the runs root."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    monkeypatch.setenv("AIRFLOW_VAR_PAR_RUNNER", "docker")
    monkeypatch.setenv("AIRFLOW_VAR_PAR_RUNS_ROOT", str(runs))
    return runs


def test_docker_operator_mounts_the_runs_root_at_the_same_path(docker_runner, monkeypatch):
    monkeypatch.setenv("VK_ICD_FILENAMES", "/host/only/lvp_icd.json")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("PAR_DOCKER_NETWORK", "par")
    op = orchestration.operator("validate", ["components.validate", "--help"])
    assert type(op).__name__ == "DockerOperator"
    assert op.image == orchestration.IMAGE
    (mount,) = op.mounts
    assert mount["Source"] == mount["Target"] == str(docker_runner) and mount["Type"] == "bind"
    assert op.user == f"{os.getuid()}:{os.getgid()}"
    assert op.network_mode == "par"
    assert op.environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "VK_ICD_FILENAMES" not in op.environment  # the image has its own Vulkan driver
    assert op.device_requests is None  # a GPU only where PAR_DOCKER_GPUS says there is one


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.simulator
@pytest.mark.timeout(3000)  # may be the first to ask for the image (a build from scratch)
def test_docker_operator_runs_validate_through_podmans_docker_api(
    image, podman_socket, container_dataset, docker_runner, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", podman_socket)
    monkeypatch.setattr(orchestration, "IMAGE", image)
    ui = {"profile": "smoke", "tasks": [TASK], "demos_per_task": 1}
    plan = orchestration.build_plan("docker", "python", ui, "manual__infra_test")
    (command,) = [c for c in plan["validate"] if c[c.index("--dataset") + 1].endswith(f"/data/demos/{TASK}")]
    assert command[0] == "components.validate"  # an argv for the image's `python -m`
    folder = Path(plan["run_folder"])
    assert folder.parent == docker_runner
    shutil.copytree(container_dataset, folder / "data" / "demos" / TASK)

    op = orchestration.operator("validate", command)
    op.execute(context={})

    results = json.loads((folder / "data" / "validation" / TASK / "results.json").read_text())
    assert results["success"] is True, results
    assert (folder / "data" / "validation" / TASK / "data_docs").is_dir()
    # auto_remove="success": the operator removed its container
    assert podman("container", "exists", op.container["Id"], check=False).returncode == 1
