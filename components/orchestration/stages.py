"""The pipeline's stages, declared once: ``dvc.yaml``.

``dvc.yaml`` is the file a DVC user reads and edits, and the one declaration of every
stage: its command line, whether it runs once per task (``foreach: ${tasks}``), its
dependencies, parameters, outputs, metrics and plots. ``dvc repro`` runs it in the
repository; the Airflow DAGs and the benchmarks take each stage's command line from it
and run it in a folder that holds that run's ``params.yaml``, so every path in a command
is relative to that folder. Only ``${item}`` (the task of a per-task stage) is
interpolated; a command that needs any other ``${...}`` is refused here, so that DVC
and Airflow can never run different command lines.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DVC_YAML = REPO / "dvc.yaml"
ITEM = "${item}"
_OTHER_VARIABLE = re.compile(r"\$\{(?!item\})[^}]*\}")


@dataclass(frozen=True)
class Stage:
    """One stage of ``dvc.yaml``; per-task stages keep ``${item}`` where the task goes."""

    name: str
    cmd: str
    per_task: bool
    deps: tuple[str, ...]
    params: tuple[str, ...]
    outs: tuple[str, ...]
    metrics: tuple[str, ...]
    plots: tuple[str, ...]

    @property
    def module(self) -> str:
        """The component the command runs (``components.collect``)."""
        argv = shlex.split(self.cmd)
        return argv[argv.index("-m") + 1]

    def command(self, task: str | None = None) -> str:
        """The command line for ``task`` (per-task stages) or for the whole run."""
        if self.per_task != (task is not None):
            need = "a task" if self.per_task else "no task"
            raise ValueError(f"stage {self.name!r} takes {need}, got {task!r}")
        return self.cmd.replace(ITEM, task) if task is not None else self.cmd

    def paths(self, field: str, task: str | None = None) -> list[str]:
        """``deps``, ``outs``, ``metrics`` or ``plots`` with the task filled in."""
        return [p.replace(ITEM, task) if task is not None else p for p in getattr(self, field)]


def _names(entries: list[Any] | None) -> tuple[str, ...]:
    """Paths or params of a dvc.yaml list, whose entries are strings or one-key mappings."""
    out: list[str] = []
    for entry in entries or []:
        if isinstance(entry, dict):
            out.extend(str(key) for key in entry)
        else:
            out.append(str(entry))
    return tuple(out)


def _stage(name: str, body: dict[str, Any]) -> Stage:
    per_task = "foreach" in body
    if per_task:
        if body["foreach"] != "${tasks}":
            raise ValueError(f"dvc.yaml stage {name!r}: foreach must be ${{tasks}}, got {body['foreach']!r}")
        body = body["do"]
    cmd = " ".join(str(body["cmd"]).split())
    if _OTHER_VARIABLE.search(cmd):
        raise ValueError(f"dvc.yaml stage {name!r}: its cmd may interpolate only {ITEM}: {cmd}")
    return Stage(
        name=name,
        cmd=cmd,
        per_task=per_task,
        deps=_names(body.get("deps")),
        params=_names(body.get("params")),
        outs=_names(body.get("outs")),
        metrics=_names(body.get("metrics")),
        plots=_names(body.get("plots")),
    )


def load_stages(path: str | Path = DVC_YAML) -> dict[str, Stage]:
    """Every stage of ``dvc.yaml``, in pipeline order."""
    data = yaml.safe_load(Path(path).read_text())
    return {name: _stage(name, body) for name, body in data["stages"].items()}
