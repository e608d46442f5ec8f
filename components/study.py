"""study: a grid of DVC experiments run one cell at a time, each result kept as it lands.

    python -m components.study experiments/video-prior/plan.yaml            # every cell left
    python -m components.study experiments/video-prior/plan.yaml --only NAME --dry-run

A plan (``StudyPlan``) names a base profile, the task, the demo counts, the seeds and
the arms (params overrides). A cell is one (arm, demos, seed); it runs as a DVC
experiment in this checkout, after the base is written as params.yaml::

    dvc exp run -n <study>-<arm>-d<demos>-s<seed> -S collect.demos_per_task=<demos> \\
        -S train.seed=<seed> -S pretrain.seed=<seed> -S <the arm's overrides>

so its MLflow runs carry the cell's name, and DVC's run cache reuses what cells share
(the demos, the corpus and the latents of one demo count). Each result (success_once
of the task, with its Wilson interval) is appended to the plan's results CSV as soon as
the cell ends, and a cell already there is not run again: stop the study at any time
and rerun it. After each cell the table (pooled over seeds) and the plot (success
against demos, one line per arm) are rewritten beside the CSV and logged to MLflow.

The study writes params.yaml and leaves the last cell's outputs in the workspace: run
it in a checkout of its own (``git clone . ../study``), not in the one you edit.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import subprocess
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError

from components.console import log, run_cli
from components.errors import ComponentError
from components.formats.evaluation import read_evaluation
from components.formats.files import validation_problems, write_text
from components.formats.params import load_params, materialize
from components.formats.plots import save_study_plot
from components.integrations.tracking import git_commit, log_study
from components.ml.metrics import wilson_interval

COLUMNS = ("cell", "arm", "demos", "seed", "success_once", "wilson_low", "wilson_high", "successes", "episodes",
           "date", "commit", "milestone")  # fmt: skip


class StudyPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    base: Path  # a profile (components.params), relative to the repository
    task: str
    demos: list[PositiveInt] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    arms: dict[str, dict[str, Any]] = Field(min_length=1)  # arm -> {dotted.key: value}
    results: Path  # the CSV the results are appended to; the table and plot go beside it
    # A progress flag of the task's evaluation (its ``reached`` rates, e.g. PickCube's
    # is_grasped) kept beside success: where an arm fails, not only how often.
    milestone: str | None = None

    def cells(self) -> list[dict[str, Any]]:
        """Every cell, the smallest demo count first (what the study answers first)."""
        return [
            {"cell": f"{self.name}-{arm}-d{demos}-s{seed}", "arm": arm, "demos": demos, "seed": seed}
            for demos in sorted(self.demos)
            for seed in self.seeds
            for arm in self.arms
        ]

    def overrides(self, cell: dict[str, Any]) -> dict[str, Any]:
        per_cell = {"collect.demos_per_task": cell["demos"], "train.seed": cell["seed"], "pretrain.seed": cell["seed"]}
        return per_cell | self.arms[cell["arm"]]


def read_plan(path: Path) -> StudyPlan:
    try:
        return StudyPlan.model_validate(yaml.safe_load(path.read_text()))
    except (OSError, yaml.YAMLError) as exc:
        raise ComponentError(f"study plan {path} cannot be read: {exc}") from exc
    except ValidationError as exc:
        raise ComponentError(f"study plan {path} is invalid: {validation_problems(exc)}") from exc


def _has(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def set_params(base: dict[str, Any], overrides: dict[str, Any]) -> list[str]:
    """``-S`` arguments for DVC (Hydra's syntax: a key the params lack takes a ``+``)."""
    flags = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
        flags += ["-S", f"{'' if _has(base, key) else '+'}{key}={text}"]
    return flags


def command(plan: StudyPlan, cell: dict[str, Any], base: dict[str, Any]) -> list[str]:
    return ["dvc", "exp", "run", "-n", cell["cell"], *set_params(base, plan.overrides(cell))]


def read_results(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def record(plan: StudyPlan, cell: dict[str, Any], eval_root: Path) -> dict[str, Any]:
    """Append the cell's evaluation of the task to the results CSV; return its row."""
    metrics = eval_root / plan.task / "metrics.json"
    result = read_evaluation(metrics, plan.task)
    reached = getattr(result, "reached", None) or {}
    if plan.milestone and plan.milestone not in reached:
        raise ComponentError(f"{metrics} has no progress flag {plan.milestone!r} (it has {sorted(reached)})")
    row = cell | {
        "success_once": result.success_once, "wilson_low": result.wilson_low, "wilson_high": result.wilson_high,
        "successes": round(result.success_once * result.episodes), "episodes": result.episodes,
        "date": dt.date.today().isoformat(), "commit": git_commit() or "",
        "milestone": reached[plan.milestone] if plan.milestone else "",
    }  # fmt: skip
    _append(plan.results, row)
    return row


def _append(path: Path, row: dict[str, Any]) -> None:
    """The CSV with ``row`` added, replaced whole (rows written before a column existed
    get it blank): a killed study leaves the file as it was."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(COLUMNS), restval="")
    writer.writeheader()
    writer.writerows([*read_results(path), row])
    write_text(path, text.getvalue())


def pooled(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Per (arm, demos): successes and episodes over seeds, with the Wilson interval (and
    the milestone's pooled rate and interval, where every cell has it)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["arm"], int(row["demos"])), []).append(row)
    return {key: _pool(cells) for key, cells in groups.items()}


def _pool(cells: list[dict[str, Any]]) -> dict[str, Any]:
    episodes = sum(int(r["episodes"]) for r in cells)
    successes = sum(int(r["successes"]) for r in cells)
    entry = {"successes": successes, "episodes": episodes, "rate": successes / episodes if episodes else 0.0,
             "seeds": [f"{float(r['success_once']):.3f}" for r in cells]}  # fmt: skip
    entry["low"], entry["high"] = wilson_interval(successes, episodes)
    if episodes and all(r.get("milestone") for r in cells):
        reached = sum(round(float(r["milestone"]) * int(r["episodes"])) for r in cells)
        entry["milestone"] = (reached / episodes, *wilson_interval(reached, episodes))
    return entry


def write_table(plan: StudyPlan, rows: list[dict[str, Any]], path: Path) -> None:
    flag = plan.milestone
    head = ["arm", "demos", "success (pooled)", "95% interval", "seeds (each)", "episodes"]
    head += [f"{flag} (pooled, 95% interval)"] if flag else []
    lines = [
        f"# {plan.name}: {plan.task} success_once against demonstrations, seeds pooled",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for (arm, demos), e in sorted(pooled(rows).items(), key=lambda item: (item[0][1], item[0][0])):
        cells = [arm, str(demos), f"{e['rate']:.3f}", f"[{e['low']:.3f}, {e['high']:.3f}]", ", ".join(e["seeds"]),
                 str(e["episodes"])]  # fmt: skip
        if flag:
            cells.append("{:.3f} [{:.3f}, {:.3f}]".format(*e["milestone"]) if "milestone" in e else "")
        lines.append("| " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def summarise(plan: StudyPlan) -> None:
    rows = read_results(plan.results)
    if not rows:
        return
    table, plot = plan.results.with_name("results.md"), plan.results.with_name("results.png")
    write_table(plan, rows, table)
    lines: dict[str, list] = {arm: [] for arm in plan.arms}
    reached: dict[str, list] = {arm: [] for arm in plan.arms}
    for (arm, demos), e in sorted(pooled(rows).items()):
        lines.setdefault(arm, []).append((demos, e["rate"], e["low"], e["high"]))
        if "milestone" in e:
            reached.setdefault(arm, []).append((demos, *e["milestone"]))
    title = f"{plan.name}: {plan.task}, seeds pooled, Wilson 95%"
    save_study_plot(lines, plot, title, (plan.milestone, reached) if plan.milestone else None)
    log_study(plan.name, [plan.results, table, plot])


def run_study(plan: StudyPlan, only: str | None = None, dry_run: bool = False) -> list[dict[str, Any]]:
    """Run every cell not yet recorded (or only ``only``), one at a time."""
    done = {row["cell"] for row in read_results(plan.results)}
    todo = [c for c in plan.cells() if c["cell"] not in done and (only is None or c["cell"] == only)]
    base = materialize(load_params(plan.base).model_dump(mode="json", by_alias=True))
    rows = []
    for k, cell in enumerate(todo, 1):
        argv = command(plan, cell, base)
        log.info("cell %d/%d: %s", k, len(todo), " ".join(argv))
        if dry_run:
            continue
        Path("params.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
        if subprocess.run(argv).returncode != 0:
            raise ComponentError(f"cell {cell['cell']} failed: {' '.join(argv)} (rerun the study to retry it)")
        row = record(plan, cell, Path("data") / "eval")
        log.info("%s: %s %.3f [%.3f, %.3f]", cell["cell"], plan.task, *(float(row[k]) for k in COLUMNS[4:7]))
        summarise(plan)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("plan", type=Path, help="the study's plan (YAML)")
    parser.add_argument("--only", help="run this cell only (its name: <study>-<arm>-d<demos>-s<seed>)")
    parser.add_argument("--dry-run", action="store_true", help="print the cells' commands, run nothing")
    args = parser.parse_args(argv)
    run_study(read_plan(args.plan), args.only, args.dry_run)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
