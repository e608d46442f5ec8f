"""regression: compare a fresh evaluation of the champion with what it recorded at promotion.

    python -m components.regression --params params.yaml --eval-root runs/nightly/eval \\
        --out runs/nightly/regression.json [--webhook-url URL]

For every task, a regression is a fresh success rate below the lower end of the
Wilson interval recorded on the champion's version when it was promoted (beyond the
interval, not a dip inside the noise). The result is logged as an MLflow run and
written as tags on the model version (``par.nightly.<task>.success_once``,
``par.nightly.checked_at``). On a regression the command prints a message naming
the task, the old and the new rates, calls the alert hook (always a log line; a JSON
POST to ``--webhook-url`` when given) and exits 1.
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
from components.formats.files import read_json, write_json
from components.formats.params import load_params


class RegressionError(RefusedError):
    """The champion regressed beyond its recorded interval."""

    label = "regression"


def find_regressions(recorded: dict[str, dict[str, float]], fresh: dict[str, dict[str, Any]]) -> list[str]:
    messages = []
    for task, new in sorted(fresh.items()):
        old = recorded.get(task)
        if old is None:
            messages.append(f"{task}: the champion recorded no success rate for this task")
            continue
        if new["success_once"] < old["wilson_low"]:
            messages.append(
                f"{task}: success_once fell from {old['success_once']:.3f} (recorded at promotion, 95% interval "
                f"lower bound {old['wilson_low']:.3f}) to {new['success_once']:.3f} over {new['episodes']} episodes"
            )
    return messages


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
    from components.integrations.registry import Registry
    from components.integrations.tracking import stage_run

    params = load_params(params_path)
    registry = Registry(params.gate.model_name)
    version = registry.alias_version("champion")
    if version is None:
        raise ComponentError(f"model {params.gate.model_name!r} has no champion to check")
    recorded = registry.metrics(version)
    fresh = {task: read_json(eval_root / task / "metrics.json", f"{task} evaluation") for task in params.tasks}
    messages = find_regressions(recorded, fresh)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with stage_run("nightly-eval", params_path, tags={"par.champion_version": version}):
        import mlflow

        for task, m in fresh.items():
            mlflow.log_metric(f"{task}.success_once", m["success_once"])
            mlflow.log_metric(f"{task}.recorded_success_once", recorded.get(task, {}).get("success_once", -1))
            registry.set_tag(version, f"par.nightly.{task}.success_once", str(m["success_once"]))
        mlflow.log_metric("regressed", float(bool(messages)))
    registry.set_tag(version, "par.nightly.checked_at", stamp)
    registry.set_tag(version, "par.nightly.status", "regressed" if messages else "ok")
    result = {
        "model": params.gate.model_name,
        "version": version,
        "checked_at": stamp,
        "regressions": messages,
        "fresh": fresh,
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
