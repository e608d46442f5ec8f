"""Airflow operators that run a stage's command line (from ``dvc.yaml``) in a run's folder.

The runner is a deployment setting, the environment variable ``PAR_RUNNER`` (read when
a DAG file is parsed; no Airflow Variable, so parsing makes no metadata-database call):

* ``local`` (default): a BashOperator in the worker's own environment, one machine;
* ``docker``: a DockerOperator running the component image (``PAR_IMAGE``);
* ``kubernetes``: a KubernetesPodOperator of that image (a GPU for evaluate; for pretrain
  and train, ``<stage>.nproc`` GPUs of the run's params, one a torchrun rank).

The command is the stage's own line; ``local`` runs it with the run's folder as its
working directory, the image runners as ``sh -c 'cd "$PAR_RUN_FOLDER" && exec ...'``
(the folder reaches them through a templated environment variable, since values
mapped from an upstream task are not templated). Nothing heavy is imported here: DAG
files are parsed often.
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.orchestration.runs import nightly_folder, run_folder, runs_root, stage_gpus
from components.orchestration.stages import load_stages

RUNNERS = ("local", "docker", "kubernetes")
IMAGE = os.environ.get("PAR_IMAGE", "localhost/par-components:cpu")
FOLDER = "{{ run_folder(run_id) }}"  # the DAG run's folder, rendered when the task runs
MACROS = {"run_folder": run_folder, "nightly_folder": nightly_folder, "stage_gpus": stage_gpus}
# Stages that train on ``<stage>.nproc`` processes (torchrun, one GPU each): their pods ask
# for that many GPUs, read from the run's params when the task runs (the form may change it).
DISTRIBUTED = ("pretrain", "train")
_PASSED_ON = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",  # a tracking server that asks for a login (infra/docker-compose.yaml)
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "PAR_MLFLOW_EXPERIMENT",
    "VK_ICD_FILENAMES",
    "MS_SKIP_ASSET_DOWNLOAD_PROMPT",
)


def runner() -> str:
    value = os.environ.get("PAR_RUNNER", "local")
    if value not in RUNNERS:
        raise ValueError(f"PAR_RUNNER is {value!r}; choose one of {RUNNERS}")
    return value


def environment(folder: str = FOLDER) -> dict[str, str]:
    """What every component needs to know of the run (templated: its folder, the MLflow
    parent run's key) and of the deployment (tracking server, object store)."""
    env = {
        "PAR_RUN_FOLDER": folder,
        "PAR_PIPELINE_KEY": "{{ dag.dag_id }}-{{ run_id }}",
        "PYTHONUNBUFFERED": "1",
    }
    return env | {key: os.environ[key] for key in _PASSED_ON if os.environ.get(key)}


def in_folder(command: str) -> list[str]:
    """The image runners' form of a command line: run it in ``$PAR_RUN_FOLDER``."""
    return [f'cd "$PAR_RUN_FOLDER" && exec {command}']


def stage(name: str, tasks: Any = None, *, gpu: bool = False, **kwargs: Any) -> Any:
    """The operator of ``dvc.yaml``'s stage ``name``; per-task stages map over ``tasks``
    (the run's task list, an upstream task's output)."""
    declared = load_stages()[name]
    if not declared.per_task:
        gpus = f"{{{{ stage_gpus(run_id, '{name}') }}}}" if name in DISTRIBUTED else "1"
        return component(name, declared.command(), gpu=gpu, gpus=gpus, **kwargs)

    def command_for(task: str) -> str:
        return declared.command(task)

    return component(name, tasks.map(command_for), mapped=True, gpu=gpu, **kwargs)


@dataclass(frozen=True)
class Launch:
    """Everything a runner needs to build the task of one command line."""

    task_id: str
    command: Any  # a command line, or an upstream output mapped to command lines
    mapped: bool
    gpu: bool
    gpus: str  # how many, when ``gpu``: a number or a template rendered when the task runs
    env: dict[str, str]
    folder: str
    kwargs: dict[str, Any]


def component(
    task_id: str,
    command: Any,
    *,
    mapped: bool = False,
    gpu: bool = False,
    gpus: str = "1",
    folder: str = FOLDER,
    env: dict[str, str] | None = None,
    **kwargs: Any,
) -> Any:
    """A task of the configured runner that runs ``command`` (a command line, or, when
    ``mapped``, an upstream output mapped to command lines) in the run's ``folder``;
    ``gpus``: how many GPUs a ``gpu`` pod asks for (a template is rendered when the task
    runs); ``env`` adds (templated) variables to :func:`environment`'s."""
    build = {"local": _bash, "docker": _docker, "kubernetes": _pod}[runner()]
    return build(Launch(task_id, command, mapped, gpu, gpus, environment(folder) | (env or {}), folder, kwargs))


def _expand(operator: Any, common: dict[str, Any], field: str, value: Any, mapped: bool) -> Any:
    if mapped:
        return operator.partial(**common).expand(**{field: value})
    return operator(**common, **{field: value})


def _bash(launch: Launch) -> Any:
    from airflow.providers.standard.operators.bash import BashOperator

    # dvc.yaml's commands call `python`: the worker's own interpreter.
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    common = dict(task_id=launch.task_id, cwd=launch.folder, env=launch.env | {"PATH": path}, append_env=True)
    return _expand(BashOperator, common | launch.kwargs, "bash_command", launch.command, launch.mapped)


def _docker(launch: Launch) -> Any:
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest, Mount

    # The image brings its own Vulkan driver: a worker's path to one means nothing there.
    # The container runs as the worker's user, so that both can write the run folder (a
    # host bind mount at the same path); HOME=/tmp for users without a home in the image.
    env = {k: v for k, v in launch.env.items() if k != "VK_ICD_FILENAMES"} | {"HOME": "/tmp"}
    wants_gpu = launch.gpu and os.environ.get("PAR_DOCKER_GPUS")
    root = str(runs_root())
    common = dict(
        task_id=launch.task_id,
        image=IMAGE,
        entrypoint=["sh", "-c"],
        environment=env,
        docker_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
        mounts=[Mount(target=root, source=root, type="bind")],
        mount_tmp_dir=False,
        user=f"{os.getuid()}:{os.getgid()}",
        network_mode=os.environ.get("PAR_DOCKER_NETWORK"),  # e.g. the compose network, to reach MLflow
        # Every GPU of the host: torchrun's ranks take the first <stage>.nproc of them.
        device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])] if wants_gpu else None,
        shm_size=2**30 if wants_gpu else None,  # NCCL's ranks talk through /dev/shm (64 MiB by default)
        auto_remove="success",
    )
    command = _image_form(launch.command, launch.mapped)
    return _expand(DockerOperator, common | launch.kwargs, "command", command, launch.mapped)


def _pod(launch: Launch) -> Any:
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    # A GPU is an extended resource: its request is its limit. The count may be a template
    # (Airflow renders a pod's resources when the task runs).
    resources = k8s.V1ResourceRequirements(
        limits={"nvidia.com/gpu": launch.gpus} if launch.gpu else None, requests={"cpu": "2", "memory": "8Gi"}
    )
    claim = k8s.V1PersistentVolumeClaimVolumeSource(claim_name="par-runs")
    volumes = [k8s.V1Volume(name="runs", persistent_volume_claim=claim)]
    mounts = [k8s.V1VolumeMount(name="runs", mount_path=str(runs_root()))]
    if launch.gpu:  # NCCL's ranks talk through /dev/shm, which a container gets only 64 MiB of
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")))
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
    common = dict(
        task_id=launch.task_id,
        name=launch.task_id.replace("_", "-"),
        image=IMAGE,
        cmds=["sh", "-c"],
        env_vars=launch.env,
        container_resources=resources,
        volumes=volumes,
        volume_mounts=mounts,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
    )
    command = _image_form(launch.command, launch.mapped)
    return _expand(KubernetesPodOperator, common | launch.kwargs, "arguments", command, launch.mapped)


def _image_form(command: Any, mapped: bool) -> Any:
    return command.map(in_folder) if mapped else in_folder(command)


def component_command(name: str, *args: str) -> str:
    """``python -m components.<name> ARGS`` as one shell-quoted line (commands that are
    not pipeline stages, such as the nightly evaluation of the registry's champion)."""
    return shlex.join(["python", "-m", f"components.{name}", *args])
