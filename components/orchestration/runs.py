"""A DAG run's folder and its params.yaml: the repository's params (or a profile) with
the trigger form's values applied, validated before any stage starts.

Every run works in its own folder, ``$PAR_RUNS_ROOT/<run id>`` (default ``runs/`` in the
checkout), which holds the run's complete ``params.yaml``; the stages' command lines
(``dvc.yaml``) run inside it, so two concurrent runs never share an output. Nothing
here touches Airflow's metadata database: the DAG files read only files and the
environment while they are parsed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(os.environ.get("PAR_REPO", Path(__file__).resolve().parents[2]))  # the checkout


def runs_root() -> Path:
    return Path(os.environ.get("PAR_RUNS_ROOT") or REPO / "runs")


def run_folder(run_id: str) -> str:
    """A run's private folder: its id made safe as one folder name under the runs root
    (an id of dots only, ``.`` or ``..``, would name the root or its parent: refused)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    if not name.strip("."):
        raise ValueError(f"run id {run_id!r} cannot name a run folder")
    return str(runs_root() / name)


def default_params() -> dict[str, Any]:
    """params.yaml of the repository, as written."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


def form_defaults() -> dict[str, Any]:
    """params.yaml with every default written out: the values the trigger form shows."""
    from components.formats.params import materialize

    return materialize(default_params(), "params.yaml")


@dataclass(frozen=True)
class FormField:
    """One field of par_training's trigger form and the params.yaml key it sets."""

    path: tuple[str, ...]
    schema: dict[str, Any]
    description: str


FORM_FIELDS: dict[str, FormField] = {
    "tasks": FormField(
        ("tasks",),
        {"type": "array", "items": {"type": "string"}},
        "ManiSkill tasks to collect, train on and evaluate, e.g. PushCube-v1, PickCube-v1, StackCube-v1 "
        "(each needs a motion-planning solution in ManiSkill).",
    ),
    "demos_per_task": FormField(
        ("collect", "demos_per_task"),
        {"type": "integer", "minimum": 1},
        "Motion-planning demonstrations collected per task (the paper used 1,000; 300 train PushCube in minutes).",
    ),
    "model_size": FormField(
        ("model", "size"),
        {"enum": ["tiny", "small", "base", "paper"]},
        "PAR size: tiny (2M parameters, minutes on a CPU), small (21M), base (151M, one GPU), paper (775M).",
    ),
    "model_kind": FormField(
        ("model", "kind"),
        {"enum": ["par", "bc"]},
        "par: the Physical Autoregressive Model; bc: the behaviour-cloning baseline on the same data.",
    ),
    "pretrain_steps": FormField(
        ("pretrain", "steps"),
        {"type": "integer", "minimum": 1},
        "Video-pretraining steps (frame-only windows, no actions) before training on physical tokens.",
    ),
    "train_steps": FormField(
        ("train", "steps"),
        {"type": "integer", "minimum": 1},
        "Training steps on physical tokens (frames and action chunks); a checkpoint every train.checkpoint_every.",
    ),
    "train_nproc": FormField(
        ("train", "nproc"),
        {"type": "integer", "minimum": 1},
        "Training processes (torchrun, DistributedDataParallel): one GPU each, and as many GPUs asked of "
        "the cluster; train.batch_size must split evenly over them.",
    ),
    "episodes": FormField(
        ("evaluate", "episodes"),
        {"type": "integer", "minimum": 1},
        "Closed-loop evaluation episodes per task (the paper's protocol: 125; the interval is about +-8 points).",
    ),
    "eval_shards": FormField(
        ("evaluate", "shards"),
        {"type": "integer", "minimum": 1},
        "Parallel evaluation processes per task (seed shards, merged into one result); 1 on a 2-core machine.",
    ),
    "min_wilson_low": FormField(
        ("gate", "min_wilson_low"),
        {"type": "object"},
        "Per task, the lower end of the success rate's 95% interval a model must clear to become champion, "
        'e.g. {"PushCube-v1": 0.85}.',
    ),
}


def lookup(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at ``path`` in nested mappings, or None."""
    node: Any = data
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _base(profile: str) -> dict[str, Any]:
    """params.yaml, or profiles/<profile>.yaml when one is named."""
    if not profile:
        return default_params()
    path = REPO / "profiles" / f"{profile.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (REPO / "profiles").glob("*.yaml"))
        raise ValueError(f"profile {profile!r}: no such file {path} (known profiles: {known})")
    return yaml.safe_load(path.read_text()) or {}


def run_params(ui: dict[str, Any]) -> dict[str, Any]:
    """The repository's params (or a profile) with the trigger form's values applied.

    The form shows params.yaml's values as its defaults, so a field still at its
    default leaves the base (params.yaml or the chosen profile) alone; a field the user
    changed overrides it. Without a profile the result is the same either way."""
    from components.formats.params import drop_tasks

    data = _base(str(ui.get("profile") or "").strip())
    defaults = form_defaults()
    listed = list(data.get("tasks", []))  # the base's tasks, before the form
    for key, field in FORM_FIELDS.items():
        value = ui.get(key)
        if value is None or value == lookup(defaults, field.path):
            continue
        node = data
        for part in field.path[:-1]:
            node = node.setdefault(part, {})
        node[field.path[-1]] = value
    # Per-task entries of base tasks the form left out go with them; any other name
    # stays, so that params still refuses a misspelt one.
    drop_tasks(data, set(listed) - set(data.get("tasks", [])))
    return data


def write_run_params(folder: str, data: dict[str, Any], what: str) -> Any:
    """Validate ``data`` completely, write it as ``<folder>/params.yaml``, return the params."""
    from components.formats.params import load_params, materialize

    path = Path(folder) / "params.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(materialize(data, what), sort_keys=False))
    return load_params(path)


def prepare_training_run(ui: dict[str, Any], run_id: str) -> list[str]:
    """par_training's first step: the run's params.yaml, validated (a bad form value
    fails here, by name); returns the run's tasks, over which per-task stages map."""
    params = write_run_params(run_folder(run_id), run_params(ui), "the run's parameters")
    return list(params.tasks)


def stage_gpus(run_id: str, section: str) -> str:
    """The GPUs a run's training stage asks for: ``<section>.nproc`` of the run's params
    (torchrun's ranks, one GPU each; 1 when unset). A macro of the DAGs, rendered into
    the pod's resources when the task runs, after ``prepare`` wrote the params."""
    data = yaml.safe_load((Path(run_folder(run_id)) / "params.yaml").read_text()) or {}
    nproc = lookup(data, (section, "nproc")) or 1
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"{section}.nproc in the run's params.yaml is {nproc!r}, not a whole number of at least 1")
    return str(nproc)


def nightly_folder(run_id: str) -> str:
    return run_folder(f"nightly-{run_id}")


def prepare_nightly_run(ui: dict[str, Any], run_id: str) -> list[dict[str, str]]:
    """par_nightly_eval's first step: params.yaml (or the named profile) in the run's
    folder; returns one evaluation a task, of the registry's champion."""
    data = run_params({"profile": ui.get("profile") or ""})
    params = write_run_params(nightly_folder(run_id), data, "the nightly run's parameters")
    uri = f"models:/{params.gate.model_name}@champion"
    return [{"task": task, "model_uri": uri} for task in params.tasks]
