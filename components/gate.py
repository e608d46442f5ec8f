"""gate: register the trained policy, tag it with its metrics, move aliases by the rules.

    python -m components.gate --params params.yaml --policy data/policy --eval-root data/eval \\
        --score metrics/score.json --out metrics/gate.json

The policy is logged as an MLflow pyfunc model and registered as a new version of
``gate.model_name`` with every task's evaluation as version tags, alias
``candidate``. Alias ``champion`` moves to it only when every task's Wilson lower
bound clears its threshold (``gate.min_wilson_low``) and no task falls below the
current champion's success rate by more than ``gate.max_regression``. A refusal
names the task and the numbers; it exits non-zero only if ``gate.fail_on_refusal``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components.console import log, run_cli
from components.errors import ComponentError, RefusedError
from components.formats.files import read_json, write_json
from components.formats.params import load_params


class GateRefusedError(RefusedError):
    """The gate refused the candidate and params ask for a non-zero exit."""

    label = "gate refused the candidate"


def gate(params_path: Path, policy_dir: Path, eval_root: Path, score_path: Path | None) -> dict[str, Any]:
    from components.integrations.registry import Registry, check_promotion, log_policy_model, version_tags
    from components.integrations.tracking import stage_run

    params = load_params(params_path)
    if not (policy_dir / "policy.json").is_file():
        raise ComponentError(f"policy folder {policy_dir} has no policy.json (run train first)")
    metrics = {task: read_json(eval_root / task / "metrics.json", f"{task} evaluation") for task in params.tasks}
    score = read_json(score_path, "score metrics") if score_path else {}
    registry = Registry(params.gate.model_name)
    with stage_run("gate", params_path) as run:
        import mlflow

        model_uri = log_policy_model(policy_dir)
        tags = version_tags(metrics) | {"par.run_id": run.info.run_id}
        for key in ("psnr", "ssim", "action_mae"):
            if key in score:
                tags[f"par.score.{key}"] = str(score[key])
        version = registry.register(model_uri, tags)
        registry.move_alias("candidate", version)
        champion = registry.alias_version("champion")
        candidate_metrics = registry.metrics(version)
        decision = check_promotion(candidate_metrics, registry.metrics(champion) if champion else None, params.gate)
        if decision.promote:
            registry.move_alias("champion", version, why="gate: every check passed")
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
