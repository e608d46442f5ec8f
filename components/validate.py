"""validate: Great Expectations suites over a collected dataset.

    python -m components.validate --params params.yaml --dataset data/demos/PushCube-v1 \\
        --out data/validation/PushCube-v1

One row per episode (frame shape, dtype and pixel statistics, NaN/Inf counts,
action-bound violations, lengths, success, manifest agreement), checked by an
expectation suite; plus dataset-level checks (row count, unique seeds, control
mode). Any failed expectation stops the pipeline: exit code 1, a report naming the
expectation, the column and the episodes, and nothing downstream runs.

Output folder (written whether the suite passes or not, atomically)::

    results.json     success, and every expectation with its failing episodes
    data_docs/       Great Expectations' HTML data docs (open data_docs/index.html)
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from components.console import log, run_cli
from components.errors import ComponentError, RefusedError
from components.formats.dataset import read_demo, read_manifest
from components.formats.files import atomic_output, write_json
from components.formats.params import CollectParams, ValidateParams, load_params


class ValidationFailedError(RefusedError):
    """The dataset broke at least one expectation."""

    label = "validation failed"


def episode_rows(dataset: Path, manifest: dict[str, Any], params: ValidateParams) -> list[dict[str, Any]]:
    """One row of facts per episode; unreadable episodes get ``readable = False``."""
    low = np.asarray(manifest.get("action_space_low", []), dtype=np.float64)
    high = np.asarray(manifest.get("action_space_high", []), dtype=np.float64)
    rows = []
    for index, entry in enumerate(manifest["episodes"]):
        row: dict[str, Any] = {"episode": index, "file": entry.get("file", "?"), "readable": True, "error": ""}
        try:
            demo = read_demo(dataset, index, entry)
        except ComponentError as exc:
            row.update(readable=False, error=str(exc))
            rows.append(row)
            continue
        frames, actions, proprio = demo.frames, demo.actions, demo.proprio
        T = len(actions)
        finite_actions = actions[np.isfinite(actions).all(axis=-1)] if actions.ndim == 2 else actions
        in_bounds = (
            actions.ndim == 2
            and actions.shape[-1] == low.size
            and bool(((finite_actions >= low - 1e-4) & (finite_actions <= high + 1e-4)).all())
        )
        row.update(
            seed=demo.seed,
            steps=T,
            frame_ndim=frames.ndim,
            frame_height=int(frames.shape[1]) if frames.ndim == 4 else -1,
            frame_width=int(frames.shape[2]) if frames.ndim == 4 else -1,
            frame_channels=int(frames.shape[3]) if frames.ndim == 4 else -1,
            frame_dtype=str(frames.dtype),
            frame_std=float(frames.std()) if frames.size else 0.0,
            saturated_fraction=float(((frames == 0) | (frames == 255)).mean()) if frames.size else 1.0,
            frames_match_steps=len(frames) == T + 1,
            proprio_match_steps=len(proprio) == T + 1,
            success_match_steps=len(demo.success) == T,
            action_dim=int(actions.shape[-1]) if actions.ndim == 2 else -1,
            proprio_dim=int(proprio.shape[-1]) if proprio.ndim == 2 else -1,
            nonfinite_actions=int((~np.isfinite(actions)).sum()),
            nonfinite_proprio=int((~np.isfinite(proprio)).sum()),
            actions_in_bounds=in_bounds,
            final_success=bool(demo.success[-1]) if len(demo.success) else False,
            manifest_seed_matches=entry.get("seed") == demo.seed,
            manifest_steps_match=entry.get("steps") == T,
        )
        rows.append(row)
    return rows


def build_suite(gx: Any, manifest: dict[str, Any], params: ValidateParams, collect: CollectParams, n_rows: int):
    E = gx.expectations
    height, width, _ = manifest.get("frame_shape", [collect.camera.height, collect.camera.width, 3])
    expectations = [
        E.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="frame_ndim", value_set=[4]),
        E.ExpectColumnValuesToBeInSet(column="frame_height", value_set=[height]),
        E.ExpectColumnValuesToBeInSet(column="frame_width", value_set=[width]),
        E.ExpectColumnValuesToBeInSet(column="frame_channels", value_set=[3]),
        E.ExpectColumnValuesToBeInSet(column="frame_dtype", value_set=["uint8"]),
        E.ExpectColumnValuesToBeBetween(column="frame_std", min_value=1.0),
        E.ExpectColumnValuesToBeBetween(column="saturated_fraction", max_value=params.max_saturated_fraction),
        E.ExpectColumnValuesToBeInSet(column="frames_match_steps", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="proprio_match_steps", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="success_match_steps", value_set=[True]),
        E.ExpectColumnValuesToBeBetween(column="nonfinite_actions", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeBetween(column="nonfinite_proprio", min_value=0, max_value=0),
        E.ExpectColumnValuesToBeInSet(column="actions_in_bounds", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="action_dim", value_set=[manifest.get("action_dim")]),
        E.ExpectColumnValuesToBeInSet(column="proprio_dim", value_set=[manifest.get("proprio_dim")]),
        E.ExpectColumnValuesToBeBetween(
            column="steps", min_value=params.min_episode_steps, max_value=params.max_episode_steps
        ),
        E.ExpectColumnValuesToBeInSet(column="final_success", value_set=[True]),
        E.ExpectColumnValuesToBeUnique(column="seed"),
        E.ExpectColumnValuesToBeInSet(column="manifest_seed_matches", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="manifest_steps_match", value_set=[True]),
        E.ExpectTableRowCountToEqual(value=n_rows),
    ]
    suite = gx.ExpectationSuite(name=f"{manifest['task']}_episodes")
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def dataset_problems(manifest: dict[str, Any], collect: CollectParams, rows: list[dict]) -> list[str]:
    """Checks of the manifest itself against the pipeline's parameters."""
    problems = []
    if manifest["control_mode"] != collect.control_mode:
        problems.append(
            f"manifest control_mode {manifest['control_mode']!r} differs from params collect.control_mode "
            f"{collect.control_mode!r}"
        )
    if manifest["env_kwargs"].get("control_mode") != manifest["control_mode"]:
        problems.append("manifest env_kwargs.control_mode differs from its control_mode")
    counted = manifest.get("counts", {}).get("episodes")
    if counted != len(rows):
        problems.append(f"manifest counts.episodes is {counted} but it lists {len(rows)} episodes")
    if not rows:
        problems.append("the dataset has no episodes")
    return problems


def run_suite(dataset: Path, manifest: dict, rows: list[dict], suite_fn, out_docs: Path) -> dict[str, Any]:
    """Run the suite on the episode table with Great Expectations; build data docs."""
    import pandas as pd

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="great_expectations")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = pd.DataFrame(rows)
    for column in ("seed", "steps"):
        if column not in frame:
            frame[column] = -1
    with tempfile.TemporaryDirectory() as project:
        context = gx.get_context(mode="file", project_root_dir=project)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one log line is enough
        source = context.data_sources.add_pandas(f"{manifest['task']}_dataset")
        batch = source.add_dataframe_asset("episodes").add_batch_definition_whole_dataframe("all episodes")
        suite = context.suites.add(suite_fn(gx, len(frame)))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{manifest['task']} episodes", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name="validate",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["episode"]},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame.astype(object).where(frame.notna(), None)})
        site = Path(project) / "gx" / "uncommitted" / "data_docs" / "local_site"
        if site.is_dir():
            shutil.copytree(site, out_docs)
    report = []
    for run in result.run_results.values():
        for item in run.results:
            config = item.expectation_config
            failing = [u.get("episode") for u in item.result.get("unexpected_index_list") or []]
            report.append(
                {
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("column", "batch_id")},
                    "success": bool(item.success),
                    "failing_episodes": failing,
                    "observed": item.result.get("observed_value"),
                }
            )
    return {"success": bool(result.success), "expectations": report}


def validate(dataset: Path, params: ValidateParams, collect: CollectParams, out: Path) -> dict[str, Any]:
    manifest = read_manifest(dataset)
    rows = episode_rows(dataset, manifest, params)
    with atomic_output(out) as tmp:
        result = run_suite(
            dataset, manifest, rows, lambda gx, n: build_suite(gx, manifest, params, collect, n), tmp / "data_docs"
        )
        problems = dataset_problems(manifest, collect, rows)
        errors = {r["episode"]: r["error"] for r in rows if not r["readable"]}
        summary = {
            "dataset": str(dataset),
            "task": manifest["task"],
            "success": result["success"] and not problems,
            "episodes": len(rows),
            "dataset_problems": problems,
            "unreadable_episodes": errors,
            "expectations": result["expectations"],
        }
        write_json(tmp / "results.json", summary)
    failed = [e for e in summary["expectations"] if not e["success"]]
    total = len(summary["expectations"])
    lines = [f"{manifest['task']}: {total - len(failed)}/{total} expectations met"]
    for item in failed:
        where = f"column {item['column']}" if item["column"] else "table"
        episodes = item["failing_episodes"]
        detail = f"episodes {episodes[:20]}" if episodes else f"observed {item['observed']}"
        lines.append(f"  FAILED {item['expectation']} on {where} ({item['kwargs']}): {detail}")
    for index, error in errors.items():
        lines.append(f"  episode {index}: {error}")
    for problem in problems:
        lines.append(f"  FAILED dataset check: {problem}")
    text = "\n".join(lines)
    if not summary["success"]:
        html = out / "data_docs" / "index.html"
        raise ValidationFailedError(f"{text}\nfull report: {out / 'results.json'}, HTML: {html}")
    log.info("%s", text)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (sections validate, collect)")
    parser.add_argument("--dataset", required=True, type=Path, help="dataset folder from collect")
    parser.add_argument("--out", required=True, type=Path, help="validation results folder")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    validate(args.dataset, params.validate_params, params.collect, args.out)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
