"""validate: Great Expectations suites over a collected dataset, or the video corpus.

    python -m components.validate --params params.yaml --dataset data/demos/PushCube-v1 \\
        --out data/validation/PushCube-v1
    python -m components.validate --params params.yaml --dataset data/videos --out data/validation/videos

A video corpus (components.videos) gets its own suite, one row a clip: readable, frames
only (no actions), length within videos.min_frames..max_frames, not blank, not frozen
(at least videos.min_moving_fraction of its frame pairs change 0.2% of their pixels by
more than 10 grey levels); and its camera must be the demos'.

One row per episode (frame shape, dtype and pixel statistics, NaN/Inf counts,
action-bound violations, lengths, success, manifest agreement), checked by an
expectation suite; plus dataset-level checks (row count, unique seeds, control
mode). Any failed expectation stops the pipeline: exit code 1, a report naming the
expectation, the column and the episodes, and nothing downstream runs.

Output folder (written whether the suite passes or not, atomically)::

    results.json     success, and every expectation with its failing episodes
    data_docs/       Great Expectations' HTML data docs (open data_docs/index.html)

``--docs DIR`` puts the data docs in a folder of their own instead. The pipeline does:
they carry a run time and fresh ids, so inside the results folder they would make a
rerun on the same data look new to whatever depends on it (DVC would retrain the VAE).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from components.console import log, run_cli
from components.errors import ComponentError, RefusedError
from components.formats.corpus import FORMAT as CORPUS_FORMAT
from components.formats.corpus import read_clip, read_corpus_manifest
from components.formats.dataset import read_demo, read_manifest
from components.formats.files import atomic_output, read_json, write_json
from components.formats.params import CollectParams, Params, ValidateParams, VideosParams, load_params
from components.integrations.expectations import run_suite


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


@contextmanager
def _outputs(out: Path, docs: Path | None) -> Iterator[tuple[Path, Path]]:
    """Temporary folders for the results and the data docs (``out/data_docs`` unless
    ``docs`` is given); both replace their targets only if the block succeeds."""
    with atomic_output(out) as tmp:
        if docs is None:
            yield tmp, tmp / "data_docs"
        else:
            with atomic_output(docs) as docs_tmp:
                yield tmp, docs_tmp


def validate(
    dataset: Path, params: ValidateParams, collect: CollectParams, out: Path, docs: Path | None = None
) -> dict[str, Any]:
    manifest = read_manifest(dataset)
    rows = episode_rows(dataset, manifest, params)
    with _outputs(out, docs) as (tmp, docs_tmp):
        suite = lambda gx, n: build_suite(gx, manifest, params, collect, n)  # noqa: E731
        result = run_suite(manifest["task"], rows, suite, docs_tmp, "episode", fill=("seed", "steps"))
        problems = dataset_problems(manifest, collect, rows)
        summary = {"task": manifest["task"]} | _summary(dataset, "episode", rows, result, problems)
        write_json(tmp / "results.json", summary)
    return _verdict(manifest["task"], summary, "episode", out, docs or out / "data_docs")


def _summary(dataset: Path, unit: str, rows: list[dict], result: dict, problems: list[str]) -> dict[str, Any]:
    """results.json's fields: the verdict, the rows (episodes or clips) and what failed."""
    return {
        "dataset": str(dataset),
        "success": result["success"] and not problems,
        f"{unit}s": len(rows),
        "dataset_problems": problems,
        f"unreadable_{unit}s": {r[unit]: r["error"] for r in rows if not r["readable"]},
        "expectations": result["expectations"],
    }


def _verdict(name: str, summary: dict[str, Any], unit: str, out: Path, docs: Path) -> dict[str, Any]:
    """Log what was met, or raise naming every failed expectation and its rows."""
    failed = [e for e in summary["expectations"] if not e["success"]]
    total = len(summary["expectations"])
    lines = [f"{name}: {total - len(failed)}/{total} expectations met"]
    for item in failed:
        where = f"column {item['column']}" if item["column"] else "table"
        rows = item[f"failing_{unit}s"]
        detail = f"{unit}s {rows[:20]}" if rows else f"observed {item['observed']}"
        lines.append(f"  FAILED {item['expectation']} on {where} ({item['kwargs']}): {detail}")
    for index, error in summary[f"unreadable_{unit}s"].items():
        lines.append(f"  {unit} {index}: {error}")
    for problem in summary["dataset_problems"]:
        lines.append(f"  FAILED dataset check: {problem}")
    text = "\n".join(lines)
    if not summary["success"]:
        html = docs / "index.html"
        raise ValidationFailedError(f"{text}\nfull report: {out / 'results.json'}, HTML: {html}")
    log.info("%s", text)
    return summary


# A pair of consecutive frames "moves" when this fraction of its pixels (8 of 64x64)
# changes by more than CHANGE grey levels: a mean over the frame would drown a robot
# that fills a corner of it (PlaceSphere's clips move a mean 0.5 grey level a step).
MOVING_PIXELS, CHANGE = 0.002, 10


def changed_pixels(frames: np.ndarray) -> np.ndarray:
    """(T - 1,) the fraction of pixels that change by more than CHANGE between frames."""
    step = np.abs(np.diff(frames.astype(np.int16), axis=0)).max(axis=-1)
    return (step > CHANGE).mean(axis=(1, 2))


def clip_rows(corpus: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row of facts per clip of a video corpus; unreadable clips get ``readable = False``."""
    rows = []
    for index, entry in enumerate(manifest["clips"]):
        row: dict[str, Any] = {"clip": index, "file": entry["file"], "source": entry["source"], "readable": True}
        try:
            frames = read_clip(corpus, index, manifest).frames
            with np.load(corpus / entry["file"], allow_pickle=False) as data:
                arrays = sorted(data.files)
        except ComponentError as exc:
            rows.append(row | {"readable": False, "error": str(exc)})
            continue
        moving = changed_pixels(frames) >= MOVING_PIXELS
        rows.append(
            row
            | {
                "error": "",
                "frames": len(frames),
                "frame_std": float(frames.std()),
                "moving_fraction": float(moving.mean()),
                "arrays": ",".join(arrays),
            }
        )
    return rows


def build_corpus_suite(gx: Any, params: VideosParams, n_rows: int) -> Any:
    E = gx.expectations
    expectations = [
        E.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
        E.ExpectColumnValuesToBeInSet(column="arrays", value_set=["frames"]),  # no actions
        E.ExpectColumnValuesToBeBetween(column="frames", min_value=params.min_frames, max_value=params.max_frames),
        E.ExpectColumnValuesToBeBetween(column="frame_std", min_value=params.min_frame_std),  # blank
        E.ExpectColumnValuesToBeBetween(column="moving_fraction", min_value=params.min_moving_fraction),  # frozen
        E.ExpectTableRowCountToEqual(value=n_rows),
    ]
    suite = gx.ExpectationSuite(name="video_corpus_clips")
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def validate_corpus(corpus: Path, params: Params, out: Path, docs: Path | None = None) -> dict[str, Any]:
    """The video corpus's clips against the suite, and its frame shape against the demos'."""
    manifest = read_corpus_manifest(corpus)
    rows = clip_rows(corpus, manifest)
    problems = []
    camera = params.collect.camera
    if manifest["camera"] != json.loads(json.dumps(camera.manifest())):  # as JSON: tuples are lists
        problems.append(f"the corpus's camera {manifest['camera']} is not collect.camera {camera.manifest()}")
    with _outputs(out, docs) as (tmp, docs_tmp):
        if rows:
            suite = lambda gx, n: build_corpus_suite(gx, params.videos, n)  # noqa: E731
            result = run_suite("video_corpus", rows, suite, docs_tmp, "clip", fill=("frames",))
        else:  # an empty corpus (no source): nothing to check
            result = {"success": True, "expectations": []}
        summary = {"format": CORPUS_FORMAT} | _summary(corpus, "clip", rows, result, problems)
        write_json(tmp / "results.json", summary)
    return _verdict("video corpus", summary, "clip", out, docs or out / "data_docs")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (sections validate, collect, videos)")
    parser.add_argument("--dataset", required=True, type=Path, help="dataset folder from collect, or videos' corpus")
    parser.add_argument("--out", required=True, type=Path, help="validation results folder")
    parser.add_argument("--docs", type=Path, help="folder for the HTML data docs (default: OUT/data_docs)")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    manifest = args.dataset / "manifest.json"
    if (
        manifest.is_file()
        and isinstance(raw := read_json(manifest, "manifest"), dict)
        and raw.get("format") == CORPUS_FORMAT
    ):
        validate_corpus(args.dataset, params, args.out, args.docs)
    else:
        validate(args.dataset, params.validate_params, params.collect, args.out, args.docs)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
