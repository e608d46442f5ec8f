"""The MLflow model registry side: logging policies, model URIs, and promotion checks.

Stages are deprecated in MLflow; we use aliases only: ``candidate`` (the newest
registered version) and ``champion`` (the version in service). A version carries
its evaluation as tags (``par.<task>.success_once``, ``par.<task>.wilson_low``, ...),
so any later check compares against the numbers recorded when it was promoted.
"""

from __future__ import annotations

import getpass
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.errors import ComponentError
from components.formats.evaluation import RECORDED, Evaluation, finite_rate
from components.formats.params import GateParams
from components.formats.policy import Policy, load_policy

POLICY_TAG = "par.policy_sha256"  # the content hash of the registered bundle


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


def log_policy_model(policy_dir: Path) -> str:
    """Log the bundle as a pyfunc model in the active run; return its model URI. The
    model is logged as code (MLflow's models-from-code: the file policy_model.py, not a
    pickled object), so loading it from the registry unpickles nothing."""
    mlflow = _mlflow()
    info = mlflow.pyfunc.log_model(
        name="policy",
        python_model=str(Path(__file__).with_name("policy_model.py")),
        artifacts={"policy": str(policy_dir)},
        pip_requirements=["torch", "diffusers", "safetensors", "pydantic>=2", "pandas", "numpy<2"],
    )
    return info.model_uri


def version_tags(evaluations: dict[str, Evaluation], policy_sha256: str) -> dict[str, str]:
    """What a version records of its evidence: every task's rates, the bundle's hash."""
    tags = {f"par.{task}.{key}": str(getattr(e, key)) for task, e in evaluations.items() for key in RECORDED}
    return tags | {"par.tasks": ",".join(evaluations), POLICY_TAG: policy_sha256}


def recorded_metrics(tags: dict[str, str]) -> dict[str, dict[str, float]]:
    """Inverse of :func:`version_tags`; a value that is not a number reads as NaN, which
    every check refuses."""
    out: dict[str, dict[str, float]] = {}
    for key, value in tags.items():
        parts = key.split(".")
        if len(parts) >= 3 and parts[0] == "par" and parts[-1] in RECORDED:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            out.setdefault(".".join(parts[1:-1]), {})[parts[-1]] = number
    return out


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)  # why not (empty when promoted)
    checks: list[str] = field(default_factory=list)  # every check, passed or not


def evidence_problems(metrics: dict[str, float] | None, gate: GateParams, whose: str) -> list[str]:
    """Why ``metrics`` (one task's recorded or fresh rates) cannot be decided on, if so."""
    if not metrics:
        return [f"{whose} has no evaluation"]
    problems = [f"{whose} {key} is missing" for key in RECORDED if key not in metrics]
    problems += [
        f"{whose} {key} is {metrics[key]}, not a number in [0, 1]"
        for key in RECORDED[:-1]
        if key in metrics and not finite_rate(metrics[key])
    ]
    episodes = metrics.get("episodes", math.nan)
    if "episodes" in metrics and not (math.isfinite(episodes) and episodes >= gate.min_episodes):
        problems.append(f"{whose} covers {episodes} episodes, fewer than gate.min_episodes {gate.min_episodes}")
    return problems


def check_promotion(
    candidate: dict[str, dict[str, float]],
    champion: dict[str, dict[str, float]] | None,
    gate: GateParams,
    tasks: list[str],
) -> Decision:
    """Every task of the run has complete, finite evidence; its Wilson lower bound clears
    its threshold; and it falls no more than ``gate.max_regression`` below the
    champion's success_once (whose record must be finite too)."""
    decision = Decision(promote=True)
    for task in tasks:
        problems = evidence_problems(candidate.get(task), gate, f"{task}: the candidate")
        if champion is not None:
            problems += evidence_problems(champion.get(task), gate.model_copy(update={"min_episodes": 1}),
                                          f"{task}: the champion")  # fmt: skip
        decision.reasons += problems
        if problems:
            continue
        m = candidate[task]
        need = gate.min_wilson_low.get(task, gate.default_min_wilson_low)
        line = f"{task}: wilson_low {m['wilson_low']:.3f} vs threshold {need:.3f}"
        decision.checks.append(line)
        if m["wilson_low"] < need:
            decision.reasons.append(f"{line} (success_once {m['success_once']:.3f} over {int(m['episodes'])})")
        if champion is not None:
            old = champion[task]["success_once"]
            line = f"{task}: success_once {m['success_once']:.3f} vs champion {old:.3f} (margin {gate.max_regression})"
            decision.checks.append(line)
            if m["success_once"] < old - gate.max_regression:
                decision.reasons.append(line)
    decision.promote = not decision.reasons
    return decision


def _missing(exc: Exception) -> bool:
    """MLflow's answer for a model, version or alias that does not exist (any other
    error, a server or network failure, is not an answer and propagates)."""
    code = getattr(exc, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or (code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc))


class Registry:
    """Versions, tags and aliases of one registered model. Errors of the registry
    propagate (MLflow's client already retries what can be retried); only "there is
    no such alias / version" is an answer."""

    def __init__(self, name: str) -> None:
        self.mlflow = _mlflow()
        self.client = self.mlflow.MlflowClient()
        self.name = name

    def register(self, model_uri: str, tags: dict[str, str], description: str = "") -> str:
        version = self.mlflow.register_model(model_uri, self.name, tags=tags)
        if description:
            self.client.update_model_version(self.name, str(version.version), description=description)
        return str(version.version)

    def delete(self, version: str) -> None:
        self.client.delete_model_version(self.name, version)

    def alias_version(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as exc:
            if _missing(exc):
                return None
            raise

    def set_alias(self, alias: str, version: str | None) -> None:
        """Point ``alias`` at ``version`` (None: remove it), with no record (a rollback of a failed step)."""
        if version is None:
            if self.alias_version(alias) is not None:
                self.client.delete_registered_model_alias(self.name, alias)
        else:
            self.client.set_registered_model_alias(self.name, alias, version)

    def tags(self, version: str) -> dict[str, str]:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.client.get_model_version(self.name, version).tags)
        except MlflowException as exc:
            if _missing(exc):
                raise ComponentError(f"model {self.name!r} has no version {version!r}") from exc
            raise

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
