"""regression: compare a fresh evaluation of the champion with what it recorded at promotion.

    python -m components.regression --params params.yaml --eval-root runs/nightly/eval \\
        --out runs/nightly/regression.json [--webhook-url URL]

For every task, a regression is a fresh success rate below the lower end of the
Wilson interval recorded on the champion's version when it was promoted (beyond the
interval, not a dip inside the noise). The result is logged as an MLflow run and
written as tags on the model version (``par.nightly.<task>.success_once``,
``par.nightly.checked_at``). Evidence that cannot be compared fails the same way as a
drop: a task whose evaluation is missing, malformed, NaN or of another bundle than the
champion's, or whose recorded rate is not a finite number. On either the command
prints a message naming the task and the problem (for a drop, the old and the new
rates), calls the alert hook (always a log line; a JSON POST to ``--webhook-url`` when
given) and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from components.console import log, run_cli
from components.errors import ComponentError, RefusedError
from components.formats.evaluation import Evaluation, finite_rate, read_evaluation
from components.formats.files import write_json
from components.formats.params import load_params


class RegressionError(RefusedError):
    """The champion regressed beyond its recorded interval."""

    label = "regression"


def find_regressions(
    recorded: dict[str, dict[str, float]], fresh: dict[str, Evaluation], tasks: list[str]
) -> list[str]:
    """A message for every task of the run whose fresh success rate fell below the lower
    end of the interval recorded at promotion, or whose record cannot be compared."""
    messages = []
    for task in tasks:
        old, new = recorded.get(task, {}), fresh.get(task)
        if new is None:
            continue  # its evaluation's problem is reported already
        if not (finite_rate(old.get("success_once")) and finite_rate(old.get("wilson_low"))):
            messages.append(f"{task}: the champion recorded no valid success rate and interval for this task: {old}")
        elif new.success_once < old["wilson_low"]:
            messages.append(
                f"{task}: success_once fell from {old['success_once']:.3f} (recorded at promotion, 95% interval "
                f"lower bound {old['wilson_low']:.3f}) to {new.success_once:.3f} over {new.episodes} episodes"
            )
    return messages


def read_fresh(eval_root: Path, tasks: list[str], policy_sha256: str | None) -> tuple[dict[str, Evaluation], list[str]]:
    """Every task's fresh evaluation of the champion, and what is wrong with the evidence:
    a missing, malformed or non-finite evaluation, or one of another bundle."""
    fresh, problems = {}, []
    for task in tasks:
        path = eval_root / task / "metrics.json"
        try:
            fresh[task] = read_evaluation(path, task)
        except ComponentError as exc:
            problems.append(f"{task}: no usable evidence: {exc}")
            continue
        if policy_sha256 and fresh[task].policy_sha256 != policy_sha256:
            problems.append(f"{task}: {path} evaluated another bundle than the champion's")
    return fresh, problems


def alert(messages: list[str], webhook_url: str | None) -> None:
    """The alert hook: always a log line; a JSON POST to the webhook when one is set."""
    text = "PAR champion regression: " + " | ".join(messages)
    log.error("%s", text)
    if webhook_url:
        request = urllib.request.Request(
            webhook_url, data=json.dumps({"text": text}).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                log.info("alert webhook answered %s", response.status)
        except OSError as exc:  # an alert that cannot be delivered must not hide the regression
            log.error("alert webhook %s failed: %s", webhook_url, exc)


def check(params_path: Path, eval_root: Path, webhook_url: str | None) -> dict[str, Any]:
    from components.integrations.registry import POLICY_TAG, Registry, recorded_metrics
    from components.integrations.tracking import stage_run

    params = load_params(params_path)
    registry = Registry(params.gate.model_name)
    version = registry.alias_version("champion")
    if version is None:
        raise ComponentError(f"model {params.gate.model_name!r} has no champion to check")
    tags = registry.tags(version)
    recorded = recorded_metrics(tags)
    fresh, messages = read_fresh(eval_root, list(params.tasks), tags.get(POLICY_TAG))
    messages += find_regressions(recorded, fresh, list(params.tasks))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with stage_run("nightly-eval", params_path, tags={"par.champion_version": version}):
        import mlflow

        for task, m in fresh.items():
            mlflow.log_metric(f"{task}.success_once", m.success_once)
            if finite_rate(recorded.get(task, {}).get("success_once")):
                mlflow.log_metric(f"{task}.recorded_success_once", recorded[task]["success_once"])
            registry.set_tag(version, f"par.nightly.{task}.success_once", str(m.success_once))
        mlflow.log_metric("regressed", float(bool(messages)))
    registry.set_tag(version, "par.nightly.checked_at", stamp)
    registry.set_tag(version, "par.nightly.status", "regressed" if messages else "ok")
    result = {
        "model": params.gate.model_name,
        "version": version,
        "checked_at": stamp,
        "regressions": messages,
        "fresh": {task: m.model_dump() for task, m in fresh.items()},
        "recorded": recorded,
    }
    if messages:
        alert(messages, webhook_url)
    else:
        log.info("champion version %s holds its recorded success rates", version)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--eval-root", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--webhook-url",
        default=os.environ.get("PAR_ALERT_WEBHOOK") or None,
        help="alert webhook (JSON POST) called on a regression (default: $PAR_ALERT_WEBHOOK)",
    )
    args = parser.parse_args(argv)
    result = check(args.params, args.eval_root, args.webhook_url)
    write_json(args.out, result)
    if result["regressions"]:
        raise RegressionError("; ".join(result["regressions"]))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
