"""The MLflow model registry side: logging policies, model URIs, and promotion checks.

Stages are deprecated in MLflow; we use aliases only: ``candidate`` (the newest
registered version) and ``champion`` (the version in service). A version carries
its evaluation as tags (``par.<task>.success_once``, ``par.<task>.wilson_low``, ...),
so any later check compares against the numbers recorded when it was promoted.
"""

from __future__ import annotations

import getpass
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from components.errors import ComponentError
from components.formats.params import GateParams
from components.formats.policy import Policy, load_policy

METRIC_KEYS = ("success_once", "success_at_end", "wilson_low", "wilson_high", "episodes")


def _mlflow():
    import mlflow

    from components.integrations.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def resolve_policy(uri: str) -> Policy:
    """Load a policy from a folder, ``models:/<name>@<alias>``, ``models:/<name>/<version>``
    or ``runs:/<run_id>/<path>``."""
    if uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/", "s3://")):
        mlflow = _mlflow()
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        except Exception as exc:  # MLflow raises several types for unknown models/aliases
            raise ComponentError(f"cannot resolve model URI {uri!r}: {exc}") from exc
        found = sorted(local.rglob("policy.json"), key=lambda p: len(p.parts))
        if not found:
            raise ComponentError(f"model URI {uri!r} does not hold a policy bundle (no policy.json in {local})")
        return load_policy(found[0].parent)
    path = Path(uri)
    if not path.exists():
        raise ComponentError(f"model URI {uri!r}: no such folder, and not an MLflow URI")
    return load_policy(path)


class PolicyModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper of a policy bundle (a history-free first decision).

    ``predict`` takes a DataFrame with columns ``task`` (str), ``frame`` (H x W x 3
    uint8, nested lists or arrays) and ``proprio``; it returns the first action chunk of
    each row. Closed-loop control with the KV-cache is the evaluate stage's job.
    """

    def load_context(self, context: Any) -> None:
        self.policy = load_policy(context.artifacts["policy"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        import numpy as np
        import torch

        from par.sampling import rollout_for

        out = []
        for row in model_input.itertuples():
            frame = np.asarray(row.frame, dtype=np.uint8)[None]
            rollout = rollout_for(self.policy.model, torch.tensor([self.policy.task_id(row.task)]))
            proprio = np.asarray(row.proprio, dtype=np.float32)[None]
            use_q = self.policy.model.config.proprio_dim
            rollout.observe(self.policy.encode_frames(frame), self.policy.normalize_proprio(proprio) if use_q else None)
            out.append(self.policy.denormalize_actions(rollout.sample_actions()[0]).tolist())
        return pd.DataFrame({"actions": out})


def log_policy_model(policy_dir: Path) -> str:
    """Log the bundle as a pyfunc model in the active run; return its model URI."""
    mlflow = _mlflow()
    info = mlflow.pyfunc.log_model(
        name="policy",
        python_model=PolicyModel(),
        artifacts={"policy": str(policy_dir)},
        pip_requirements=["torch", "diffusers", "safetensors", "pydantic>=2", "pandas", "numpy<2"],
    )
    return info.model_uri


def version_tags(metrics: dict[str, dict[str, Any]]) -> dict[str, str]:
    tags = {}
    for task, m in metrics.items():
        for key in METRIC_KEYS:
            if key in m:
                tags[f"par.{task}.{key}"] = str(m[key])
    tags["par.tasks"] = ",".join(metrics)
    return tags


def recorded_metrics(tags: dict[str, str]) -> dict[str, dict[str, float]]:
    """Inverse of :func:`version_tags`."""
    out: dict[str, dict[str, float]] = {}
    for key, value in tags.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] == "par" and parts[-1] in METRIC_KEYS:
            out.setdefault(".".join(parts[1:-1]), {})[parts[-1]] = float(value)
    return out


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)  # why not (empty when promoted)
    checks: list[str] = field(default_factory=list)  # every check, passed or not


def check_promotion(
    candidate: dict[str, dict[str, float]], champion: dict[str, dict[str, float]] | None, gate: GateParams
) -> Decision:
    """Every task's Wilson lower bound clears its threshold, and no task regresses
    below the champion's success_once by more than ``gate.max_regression``."""
    decision = Decision(promote=True)
    if not candidate:
        return Decision(False, ["the candidate has no evaluation metrics"])
    for task, m in sorted(candidate.items()):
        need = gate.min_wilson_low.get(task, gate.default_min_wilson_low)
        line = f"{task}: wilson_low {m['wilson_low']:.3f} vs threshold {need:.3f}"
        decision.checks.append(line)
        if m["wilson_low"] < need:
            decision.reasons.append(f"{line} (success_once {m['success_once']:.3f} over {int(m['episodes'])})")
        if champion and task in champion:
            old = champion[task]["success_once"]
            line = f"{task}: success_once {m['success_once']:.3f} vs champion {old:.3f} (margin {gate.max_regression})"
            decision.checks.append(line)
            if m["success_once"] < old - gate.max_regression:
                decision.reasons.append(line)
    decision.promote = not decision.reasons
    return decision


class Registry:
    """Versions, tags and aliases of one registered model."""

    def __init__(self, name: str) -> None:
        self.mlflow = _mlflow()
        self.client = self.mlflow.MlflowClient()
        self.name = name

    def register(self, model_uri: str, tags: dict[str, str]) -> str:
        version = self.mlflow.register_model(model_uri, self.name, tags=tags)
        return str(version.version)

    def alias_version(self, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except Exception:  # no such alias (or model) yet
            return None

    def tags(self, version: str) -> dict[str, str]:
        try:
            return dict(self.client.get_model_version(self.name, version).tags)
        except Exception as exc:
            raise ComponentError(f"model {self.name!r} has no version {version!r}: {exc}") from exc

    def metrics(self, version: str) -> dict[str, dict[str, float]]:
        return recorded_metrics(self.tags(version))

    def set_tag(self, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(self.name, version, key, value)

    def move_alias(self, alias: str, version: str, who: str = "", why: str = "") -> None:
        previous = self.alias_version(alias)
        self.client.set_registered_model_alias(self.name, alias, version)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.set_tag(version, f"par.{alias}.since", stamp)
        if previous and previous != version:
            self.set_tag(version, f"par.{alias}.previous", previous)
        history = json.loads(self.tags(version).get(f"par.{alias}.history", "[]"))
        history.append({"at": stamp, "by": who or getpass.getuser(), "why": why, "previous": previous})
        self.set_tag(version, f"par.{alias}.history", json.dumps(history)[-4900:])
