"""Wiring shared by the PAR DAGs: the runner choice, run folders and command lines.

Nothing heavy is imported at module level (no torch, diffusers or ManiSkill): DAG
files are parsed often. A component step is always the same command line,
``python -m components.<name> <args>``, run by one of three runners chosen by the
Airflow Variable ``par_runner`` (or the environment variable AIRFLOW_VAR_PAR_RUNNER):

* ``local``: a BashOperator in the worker's environment (one machine; the default);
* ``docker``: a DockerOperator running the component image;
* ``kubernetes``: a KubernetesPodOperator (GPU requests for train and evaluate).
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import Variable

REPO = Path(os.environ.get("PAR_REPO", Path(__file__).resolve().parents[1]))  # the checkout
IMAGE = os.environ.get("PAR_IMAGE", "localhost/par-components:cpu")
RUNNERS = ("local", "docker", "kubernetes")


def runner() -> str:
    value = Variable.get("par_runner", default="local")
    if value not in RUNNERS:
        raise ValueError(f"Airflow Variable par_runner is {value!r}; choose one of {RUNNERS}")
    return value


def runs_root() -> Path:
    return Path(Variable.get("par_runs_root", default=str(REPO / "runs")))


def default_params() -> dict[str, Any]:
    """params.yaml of the repository (the defaults shown in the trigger form)."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def run_folder(run_id: str) -> Path:
    """A run's private folder: two concurrent runs never share outputs."""
    return runs_root() / re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)


def command(choice: str, python: str, name: str, *args: str) -> str | list[str]:
    """The component's command line in the runner's form: a shell string for ``local``
    (the worker's own Python), an argv for the image (whose entrypoint is ``python -m``)."""
    argv = [f"components.{name}", *args]
    return shlex.join([python, "-m", *argv]) if choice == "local" else argv


def environment() -> dict[str, str]:
    """What every component needs to know of the run (templated: MLflow parent run, tracking)."""
    env = {"PAR_PIPELINE_KEY": "{{ dag.dag_id }}-{{ run_id }}", "PYTHONUNBUFFERED": "1"}
    for key in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_S3_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "PAR_MLFLOW_EXPERIMENT",
        "VK_ICD_FILENAMES",
        "MS_SKIP_ASSET_DOWNLOAD_PROMPT",
    ):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def stage_commands(plan: Any, stage: str) -> Any:
    """An XComArg holding the plan's command list for ``stage`` (mapping needs a task's
    whole return value, not a key of it)."""
    from airflow.sdk import task

    @task(task_id=f"{stage}_commands")
    def pick(plan: dict, stage: str) -> list:
        return plan[stage]

    return pick(plan, stage)


def operator(task_id: str, command: Any, *, mapped: bool = False, gpu: bool = False, **kwargs: Any):
    """A component task for the configured runner; ``command`` is usually an XComArg
    (a list of commands when ``mapped``) built by the DAG's plan task with :func:`command`."""
    choice = runner()
    env = environment()
    if choice == "local":
        from airflow.providers.standard.operators.bash import BashOperator

        common = dict(task_id=task_id, cwd=str(REPO), append_env=True, **kwargs)
        if mapped:
            return BashOperator.partial(env=env, **common).expand(bash_command=command)
        return BashOperator(bash_command=command, env=env, **common)
    if choice == "docker":
        from airflow.providers.docker.operators.docker import DockerOperator
        from docker.types import DeviceRequest, Mount

        # The image brings its own Vulkan driver: a worker's path to one means nothing there.
        # The container runs as the worker's user, so that both can write the run folder (a
        # host bind mount at the same path); HOME=/tmp for users without a home in the image.
        env = {k: v for k, v in env.items() if k != "VK_ICD_FILENAMES"} | {"HOME": "/tmp"}
        gpus = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpu and os.environ.get("PAR_DOCKER_GPUS") else None
        common = dict(
            task_id=task_id,
            image=IMAGE,
            docker_url=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
            mounts=[Mount(target=str(runs_root()), source=str(runs_root()), type="bind")],
            mount_tmp_dir=False,
            user=f"{os.getuid()}:{os.getgid()}",
            network_mode=os.environ.get("PAR_DOCKER_NETWORK"),  # e.g. the compose network, to reach MLflow
            device_requests=gpus,
            auto_remove="success",
            **kwargs,
        )
        if mapped:
            return DockerOperator.partial(environment=env, **common).expand(command=command)
        return DockerOperator(command=command, environment=env, **common)
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    resources = k8s.V1ResourceRequirements(
        limits={"nvidia.com/gpu": "1"} if gpu else None, requests={"cpu": "2", "memory": "8Gi"}
    )
    volume = k8s.V1Volume(
        name="runs", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name="par-runs")
    )
    common = dict(
        task_id=task_id,
        name=task_id.replace("_", "-"),
        image=IMAGE,
        cmds=[],
        container_resources=resources,
        volumes=[volume],
        volume_mounts=[k8s.V1VolumeMount(name="runs", mount_path=str(runs_root()))],
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
        **kwargs,
    )
    if mapped:
        return KubernetesPodOperator.partial(env_vars=env, **common).expand(arguments=command)
    return KubernetesPodOperator(arguments=command, env_vars=env, **common)


# ------------------------------------------------------------------ run plans
# Called at run time by the DAGs' first task (never at parse time).


# Trigger-form fields and where they go in params.yaml.
FORM_FIELDS: dict[str, tuple[str, ...]] = {
    "tasks": ("tasks",),
    "demos_per_task": ("collect", "demos_per_task"),
    "model_size": ("model", "size"),
    "model_kind": ("model", "kind"),
    "pretrain_steps": ("pretrain", "steps"),
    "train_steps": ("train", "steps"),
    "episodes": ("evaluate", "episodes"),
    "eval_shards": ("evaluate", "shards"),
    "min_wilson_low": ("gate", "min_wilson_low"),
}


def _lookup(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def run_params(ui: dict[str, Any]) -> dict[str, Any]:
    """The repository's params (or a profile) with the trigger form's values applied.

    The form shows params.yaml's values as its defaults, so a field still at its
    default leaves the base (params.yaml or the chosen profile) alone; a field the user
    changed overrides it. Without a profile the result is the same either way."""
    from components.params import BY_TASK, materialize

    profile = str(ui.get("profile") or "").strip()
    if profile:
        path = REPO / "profiles" / f"{profile.removesuffix('.yaml')}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))
            raise ValueError(f"profile {profile!r}: no such file {path} (known profiles: {known})")
        data = yaml.safe_load(path.read_text()) or {}
    else:
        data = default_params()
    form_defaults = materialize(default_params(), "params.yaml")
    listed = list(data.get("tasks", []))  # the base's tasks, before the form
    for key, path in FORM_FIELDS.items():
        value = ui.get(key)
        if value is None or value == _lookup(form_defaults, path):
            continue
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    # Per-task entries of base tasks the form left out go with them; any other name
    # stays, so that params still refuses a misspelt one.
    dropped = set(listed) - set(data.get("tasks", []))
    for key in BY_TASK:
        by_task = data.get("collect", {}).get(key)
        if by_task:
            data["collect"][key] = {t: v for t, v in by_task.items() if t not in dropped}
    return data


def build_plan(runner: str, python: str, ui: dict[str, Any], run_id: str) -> dict[str, Any]:
    from components.params import load_params

    folder = run_folder(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    params_file = folder / "params.yaml"
    from components.params import materialize

    # Complete and validated: a bad value from the trigger form fails here, by name.
    params_file.write_text(yaml.safe_dump(materialize(run_params(ui), "the run's parameters"), sort_keys=False))
    params = load_params(params_file)
    f = str(folder)

    def c(name: str, *args: str) -> Any:
        return command(runner, python, name, "--params", str(params_file), *args)

    # Seed shards of every task: (task, shard, first seed, episodes); the last one may be short.
    total, start = params.evaluate.episodes, params.evaluate.seed_start
    per_shard = -(-total // params.evaluate.shards)
    shards = [
        (task, k, start + k * per_shard, min(per_shard, total - k * per_shard))
        for task in params.tasks
        for k in range(params.evaluate.shards)
        if k * per_shard < total
    ]
    sharded = len(shards) > len(params.tasks)

    def evaluate(task: str, k: int, first: int, episodes: int) -> Any:
        # One shard a task: it writes the task's result itself and nothing is merged.
        out = [f"{f}/data/eval_shards/{task}/{k}"] if sharded else [f"{f}/data/eval/{task}"]
        if not sharded:
            out += ["--metrics", f"{f}/metrics/eval/{task}.json"]
        return c(
            "evaluate",
            "--model-uri",
            f"{f}/data/policy",
            "--task",
            task,
            "--dataset",
            f"{f}/data/demos/{task}",
            "--seed-start",
            str(first),
            "--episodes",
            str(episodes),
            "--out",
            *out,
            "--no-progress",
        )

    return {
        "run_folder": f,
        "tasks": list(params.tasks),
        "collect": [c("collect", "--task", t, "--out", f"{f}/data/demos/{t}", "--no-progress") for t in params.tasks],
        "validate": [
            c("validate", "--dataset", f"{f}/data/demos/{t}", "--out", f"{f}/data/validation/{t}") for t in params.tasks
        ],
        "encode": c(
            "encode",
            "--demos-root",
            f"{f}/data/demos",
            "--validation-root",
            f"{f}/data/validation",
            "--out",
            f"{f}/data/encoded",
            "--metrics",
            f"{f}/metrics/encode.json",
            "--plot",
            f"{f}/plots/encode_recon.png",
            "--no-progress",
        ),
        "pretrain": c(
            "pretrain",
            "--encoded",
            f"{f}/data/encoded",
            "--out",
            f"{f}/data/pretrained",
            "--checkpoints",
            f"{f}/outputs/pretrain/checkpoints",
            "--metrics",
            f"{f}/metrics/pretrain.json",
            "--plots",
            f"{f}/plots",
            "--no-progress",
        ),
        "train": c(
            "train",
            "--encoded",
            f"{f}/data/encoded",
            "--pretrained",
            f"{f}/data/pretrained",
            "--out",
            f"{f}/data/policy",
            "--checkpoints",
            f"{f}/outputs/train/checkpoints",
            "--metrics",
            f"{f}/metrics/train.json",
            "--plots",
            f"{f}/plots",
            "--no-progress",
        ),
        "evaluate": [evaluate(*shard) for shard in shards],
        # An empty list (one shard a task) maps to no task instance: merge is skipped.
        "merge": [
            c(
                "evaluate",
                "--merge",
                *[f"{f}/data/eval_shards/{t}/{k}" for tt, k, _, _ in shards if tt == t],
                "--out",
                f"{f}/data/eval/{t}",
                "--metrics",
                f"{f}/metrics/eval/{t}.json",
            )
            for t in params.tasks
        ]
        if sharded
        else [],
        "score": c(
            "score",
            "--model-uri",
            f"{f}/data/policy",
            "--encoded",
            f"{f}/data/encoded",
            "--demos-root",
            f"{f}/data/demos",
            "--out",
            f"{f}/data/score",
            "--metrics",
            f"{f}/metrics/score.json",
            "--plots",
            f"{f}/plots",
        ),
        "gate": c(
            "gate",
            "--policy",
            f"{f}/data/policy",
            "--eval-root",
            f"{f}/data/eval",
            "--score",
            f"{f}/metrics/score.json",
            "--out",
            f"{f}/metrics/gate.json",
        ),
    }


def nightly_plan(
    runner: str, python: str, run_id: str, webhook: str | None, ui: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Evaluate the registry's champion on the params' fixed seeds, then check it.

    The params are params.yaml, or the profile named by the run's ``profile`` parameter
    (its tasks, ``evaluate.seed_start`` and ``evaluate.episodes`` decide the seeds)."""
    from components.params import load_params, materialize

    folder = run_folder(f"nightly-{run_id}")
    folder.mkdir(parents=True, exist_ok=True)
    params_file = folder / "params.yaml"
    data = run_params({"profile": (ui or {}).get("profile") or ""})
    params_file.write_text(yaml.safe_dump(materialize(data, "the nightly run's parameters"), sort_keys=False))
    params = load_params(params_file)
    uri = f"models:/{params.gate.model_name}@champion"
    f = str(folder)

    def c(name: str, *args: str) -> Any:
        return command(runner, python, name, "--params", str(params_file), *args)

    check = ["--eval-root", f"{f}/eval", "--out", f"{f}/regression.json"]
    if webhook:
        check += ["--webhook-url", webhook]
    return {
        "run_folder": f,
        "evaluate": [
            c("evaluate", "--model-uri", uri, "--task", t, "--out", f"{f}/eval/{t}", "--no-progress")
            for t in params.tasks
        ],
        "check": c("regression", *check),
    }
