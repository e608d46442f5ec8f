"""gate: register the trained policy, tag it with its evidence, move aliases by the rules.

    python -m components.gate --params params.yaml --policy data/policy --eval-root data/eval \\
        --score metrics/score.json --out metrics/gate.json

First the evidence, before the registry is touched: the bundle loads and acts once on
an observation of its own shape; every task of params has an evaluation that is
well-formed, finite and in range, of that task, and of this very bundle (its content
hash). Evidence that fails any of these registers nothing: one line names each task
and problem, exit 2. Then the decision: ``champion`` moves only when every task's
evaluation covers at least ``gate.min_episodes`` episodes, its Wilson lower bound
clears ``gate.min_wilson_low``, and no task falls below the current champion's
success_once by more than ``gate.max_regression`` (a champion whose record is
incomplete or not finite blocks promotion). Only then the writes: the policy as an
MLflow pyfunc model, a new version of ``gate.model_name`` with its evidence as tags and
a model card as its description, alias ``candidate``, and ``champion`` if promoted. A
failure among those writes undoes them. A refusal names the task and the numbers; it
exits 1 only if ``gate.fail_on_refusal``.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path
from typing import Any

from components.console import log, run_cli
from components.errors import ComponentError, RefusedError
from components.formats.evaluation import RECORDED, Evaluation, read_evaluation
from components.formats.files import read_json, write_json
from components.formats.params import Params, load_params
from components.formats.policy import Policy, act_once, load_policy


class GateRefusedError(RefusedError):
    """The gate refused the candidate and params ask for a non-zero exit."""

    label = "gate refused the candidate"


def gather_evidence(params: Params, policy_dir: Path, eval_root: Path) -> tuple[Policy, dict[str, Evaluation]]:
    """The bundle (loaded, and acting once) and every task's evaluation of it, or a
    ComponentError naming every task and problem."""
    policy = load_policy(policy_dir)
    act_once(policy)
    evaluations: dict[str, Evaluation] = {}
    problems = []
    for task in params.tasks:
        path = eval_root / task / "metrics.json"
        try:
            evaluation = read_evaluation(path, task)
        except ComponentError as exc:
            problems.append(str(exc))
            continue
        if evaluation.policy_sha256 != policy.sha256:
            problems.append(
                f"{task} evaluation {path} is of another policy (bundle {evaluation.policy_sha256[:12]}, "
                f"not {policy.sha256[:12]} of {policy_dir})"
            )
        evaluations[task] = evaluation
    if problems:
        raise ComponentError("no version registered: " + "; ".join(problems))
    return policy, evaluations


SCORE_KEYS = ("psnr", "ssim", "action_mae")


def read_score(path: Path) -> dict[str, float]:
    """The video-prediction means the version records (score.json), each a finite number."""
    score = read_json(path, "score metrics")
    if not isinstance(score, dict):
        raise ComponentError(f"score metrics {path} must hold a JSON object, not {type(score).__name__}")
    bad = [k for k in SCORE_KEYS if k in score and not (isinstance(score[k], int | float) and math.isfinite(score[k]))]
    if bad:
        raise ComponentError(
            f"score metrics {path}: {', '.join(f'{k} is {score[k]!r}' for k in bad)}, not finite numbers"
        )
    return {k: float(score[k]) for k in SCORE_KEYS if k in score}


def model_card(params: Params, policy: Policy, evaluations: dict[str, Evaluation], decision: Any, score: dict) -> str:
    """The version's description in the MLflow UI: the evidence a person promotes on."""
    from components.integrations.tracking import git_commit

    lines = [
        f"**{params.model.kind.upper()} {params.model.size}** on {', '.join(params.tasks)}: "
        + ("promoted to champion by the gate." if decision.promote else "candidate; the gate refused champion."),
        "",
        "| task | success_once | 95% interval | success_at_end | episodes | demos |",
        "|---|---|---|---|---|---|",
    ]
    for task, e in evaluations.items():
        demos = policy.info["task_info"][task].get("counts", {}).get("episodes", "?")
        lines.append(
            f"| {task} | {e.success_once:.3f} | [{e.wilson_low:.3f}, {e.wilson_high:.3f}] | "
            f"{e.success_at_end:.3f} | {e.episodes} | {demos} |"
        )
    if "psnr" in score:
        lines += ["", f"Video prediction: PSNR {score['psnr']:.1f} dB, SSIM {score.get('ssim', float('nan')):.3f}."]
    lines += ["", "Gate: " + "; ".join(decision.reasons if not decision.promote else decision.checks)]
    digest = hashlib.sha256(params.model_dump_json(by_alias=True).encode()).hexdigest()[:12]
    lines += [
        "",
        f"Trained with model {params.model.model_dump(mode='json')}, train steps {params.train.steps}, "
        f"pretrain {'on' if params.pretrain.enabled else 'off'} ({params.pretrain.steps} steps); "
        f"params digest {digest}; commit {git_commit() or 'unknown'}; bundle sha256 {policy.sha256[:16]}.",
    ]
    return "\n".join(lines)


def publish(registry: Any, model_uri: str, tags: dict[str, str], card: str, promote: bool) -> str:
    """Register the version and move its aliases; on any failure undo what was done,
    so that the registry is left as it was."""
    before = {alias: registry.alias_version(alias) for alias in ("candidate", "champion")}
    version = registry.register(model_uri, tags, card)
    try:
        registry.move_alias("candidate", version)
        if promote:
            registry.move_alias("champion", version, why="gate: every check passed")
    except BaseException:
        log.error("gate: registering version %s failed; undoing it", version)
        for alias, previous in before.items():
            registry.set_alias(alias, previous)
        registry.delete(version)
        raise
    return version


def gate(params_path: Path, policy_dir: Path, eval_root: Path, score_path: Path | None) -> dict[str, Any]:
    from components.integrations.registry import Registry, check_promotion, log_policy_model, version_tags
    from components.integrations.tracking import stage_run

    params = load_params(params_path)
    policy, evaluations = gather_evidence(params, policy_dir, eval_root)
    score = read_score(score_path) if score_path else {}
    registry = Registry(params.gate.model_name)
    champion = registry.alias_version("champion")
    recorded = registry.metrics(champion) if champion else None
    candidate = {task: {key: getattr(e, key) for key in RECORDED} for task, e in evaluations.items()}
    decision = check_promotion(candidate, recorded, params.gate, list(params.tasks))
    with stage_run("gate", params_path) as run:
        import mlflow

        tags = version_tags(evaluations, policy.sha256) | {"par.run_id": run.info.run_id}
        tags |= {f"par.score.{key}": str(value) for key, value in score.items()}
        card = model_card(params, policy, evaluations, decision, score)
        version = publish(registry, log_policy_model(policy_dir), tags, card, decision.promote)
        result = {
            "model": params.gate.model_name,
            "version": version,
            "promoted": decision.promote,
            "champion": version if decision.promote else champion,
            "previous_champion": champion,
            "checks": decision.checks,
            "refusal_reasons": decision.reasons,
        }
        mlflow.log_dict(result, "gate.json")
        mlflow.log_metric("promoted", float(decision.promote))
    if decision.promote:
        log.info(
            "version %s of %s promoted to champion: %s", version, params.gate.model_name, "; ".join(decision.checks)
        )
    else:
        log.warning("version %s stays candidate; refused: %s", version, "; ".join(decision.reasons))
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--policy", required=True, type=Path)
    parser.add_argument("--eval-root", required=True, type=Path)
    parser.add_argument("--score", type=Path)
    parser.add_argument("--out", required=True, type=Path, help="the decision, as JSON")
    args = parser.parse_args(argv)
    result = gate(args.params, args.policy, args.eval_root, args.score)
    write_json(args.out, result)
    if not result["promoted"] and load_params(args.params).gate.fail_on_refusal:
        raise GateRefusedError("; ".join(result["refusal_reasons"]))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
