"""promote: a person promotes or rolls back a registered version, with the gate's checks.

    python -m components.promote --params params.yaml --version 7            # promote version 7
    python -m components.promote --params params.yaml --rollback             # champion -> the previous one
    python -m components.promote --params params.yaml --version 5 --force --who alice --why "hotfix"

The same checks as the gate apply to what the version recorded: every task of params
has complete, finite evidence over at least ``gate.min_episodes`` episodes, its Wilson
lower bound clears its threshold, and no task regresses beyond the margin against the
current champion. ``--force``
overrides failed checks and records who overrode, why and what failed as tags on
the version. Only aliases and tags are used (MLflow stages are deprecated).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from components.console import log, run_cli
from components.errors import ComponentError, RefusedError
from components.formats.params import load_params


class PromotionRefusedError(RefusedError):
    """A check failed and the person did not --force the promotion."""

    label = "promotion refused"


def promote(
    params_path: Path, version: str | None, rollback: bool, force: bool, who: str, why: str
) -> dict[str, object]:
    from components.integrations.registry import Registry, check_promotion

    params = load_params(params_path)
    registry = Registry(params.gate.model_name)
    champion = registry.alias_version("champion")
    if rollback:
        if champion is None:
            raise ComponentError(f"model {params.gate.model_name!r} has no champion to roll back")
        version = registry.tags(champion).get("par.champion.previous")
        if version is None:
            raise ComponentError(f"champion version {champion} records no previous champion to roll back to")
    if version is None:
        raise ComponentError("name a --version to promote, or use --rollback")
    candidate = registry.metrics(version)
    # A rollback is checked against thresholds only: it replaces the champion on purpose.
    against = None if rollback or champion in (None, version) else registry.metrics(champion)
    decision = check_promotion(candidate, against, params.gate, list(params.tasks))
    if not decision.promote and not force:
        raise PromotionRefusedError(
            f"version {version} not promoted: " + "; ".join(decision.reasons) + " (use --force --who --why to override)"
        )
    if force and not decision.promote:
        if not who or not why:
            raise ComponentError("--force needs --who and --why, which are recorded on the version")
        registry.set_tag(version, "par.override.by", who)
        registry.set_tag(version, "par.override.why", why)
        registry.set_tag(version, "par.override.at", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        registry.set_tag(version, "par.override.failed_checks", json.dumps(decision.reasons)[:4900])
    registry.move_alias("champion", version, who=who, why=why or ("rollback" if rollback else "promote"))
    result = {
        "champion": version,
        "previous": champion,
        "forced": force and not decision.promote,
        "checks": decision.checks,
        "failed_checks": decision.reasons,
    }
    log.info("champion of %s is now version %s (was %s)", params.gate.model_name, version, champion)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--version", help="registered version to promote")
    parser.add_argument("--rollback", action="store_true", help="move champion back to the previous champion")
    parser.add_argument("--force", action="store_true", help="override failed checks (needs --who and --why)")
    parser.add_argument("--who", default="")
    parser.add_argument("--why", default="")
    args = parser.parse_args(argv)
    print(json.dumps(promote(args.params, args.version, args.rollback, args.force, args.who, args.why)))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
