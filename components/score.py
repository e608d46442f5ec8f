"""score: video prediction of a policy's model on held-out demonstrations.

    python -m components.score --params params.yaml --model-uri data/policy --encoded data/encoded \\
        --demos-root data/demos --out data/score --metrics metrics/score.json --plots plots

For every held-out episode (encode's ``holdout``): start from its first real frame
and, step by step, feed the demo's true action chunk (and proprio), let the model
predict the next frame, and feed the *prediction* back (open loop). Before each
chunk is fed, the model also proposes its own chunk, compared with the demo's.
Reported per horizon step (1 = one chunk ahead): PSNR and SSIM of the decoded
prediction against the real frame, plus the action error. Side-by-side videos
(predicted | real) and a per-step plot (PNG, and its numbers as CSV: a DVC plot) are
written and logged to MLflow.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.console import log, run_cli
from components.errors import ComponentError
from components.formats.dataset import read_demo, read_manifest
from components.formats.files import atomic_output, write_json
from components.formats.latents import load_task_arrays
from components.formats.params import load_params
from components.formats.plots import save_score_plot, save_side_by_side
from components.formats.policy import Policy
from components.ml.metrics import psnr, ssim
from par.baseline import BCPolicy
from par.sampling import rollout_for


def score_episode(
    policy: Policy,
    task_id: int,
    latents: torch.Tensor,
    actions: np.ndarray,
    proprio: np.ndarray,
    frames: np.ndarray,
    horizon: int,
    seed: int,
) -> dict[str, Any]:
    """Open-loop prediction of one episode: per-step metrics and the two frame rows."""
    model = policy.model
    L = model.config.chunk_len
    T = len(actions)
    steps = min(horizon, T // L)
    rollout = rollout_for(model, torch.tensor([task_id]), torch.Generator().manual_seed(seed))
    predicts_frames = not isinstance(model, BCPolicy)
    frame = latents[0:1]
    predicted, real, action_err = [], [], []
    for t in range(steps):
        q = policy.normalize_proprio(proprio[t * L][None]) if model.config.proprio_dim else None
        rollout.observe(frame, q)
        proposal = policy.denormalize_actions(rollout.sample_actions()[0])
        true_chunk = actions[t * L : (t + 1) * L]
        action_err.append(float(np.abs(proposal - true_chunk).mean()))
        chunk = torch.from_numpy(np.clip(policy.actions.encode(true_chunk), -1, 1))[None]
        rollout.commit_actions(chunk)
        if predicts_frames:
            frame = rollout.predict_frame()  # the prediction goes back in: open loop
            predicted.append(frame)
            real.append(frames[(t + 1) * L])
    result: dict[str, Any] = {"steps": steps, "action_mae": action_err}
    if predicted:
        pred_images = policy.decode_latents(torch.cat(predicted))
        real_images = torch.from_numpy(np.stack(real)).permute(0, 3, 1, 2).float() / 255
        result["psnr"] = psnr(pred_images, real_images).tolist()
        result["ssim"] = ssim(pred_images, real_images).tolist()
        result["pred_images"], result["real_images"] = pred_images, real_images
    return result


def per_step_mean(rows: list[list[float]]) -> list[float]:
    horizon = max((len(r) for r in rows), default=0)
    return [float(np.mean([r[h] for r in rows if len(r) > h])) for h in range(horizon)]


def score(
    policy: Policy, encoded: Path, demos_root: Path, tasks: list[str], out: Path, horizon: int, videos: int
) -> dict[str, Any]:
    per_task: dict[str, Any] = {}
    with atomic_output(out) as tmp:
        for task in tasks:
            arrays = load_task_arrays(encoded, task)
            manifest = read_manifest(demos_root / task)
            by_seed = {e["seed"]: (i, e) for i, e in enumerate(manifest["episodes"])}
            fo, ao = arrays["frame_offsets"], arrays["action_offsets"]
            rows = []
            for e in np.flatnonzero(arrays["holdout"]):
                seed = int(arrays["seeds"][e])
                if seed not in by_seed:
                    raise ComponentError(f"held-out episode with seed {seed} is not in {demos_root / task}")
                demo = read_demo(demos_root / task, *by_seed[seed], manifest)
                result = score_episode(
                    policy,
                    policy.task_id(task),
                    torch.from_numpy(arrays["latents"][fo[e] : fo[e + 1]]),
                    arrays["actions"][ao[e] : ao[e + 1]],
                    arrays["proprio"][fo[e] : fo[e + 1]],
                    demo.frames,
                    horizon,
                    seed,
                )
                if "pred_images" in result and len(rows) < videos:
                    save_side_by_side(
                        result["pred_images"], result["real_images"], tmp / "videos" / f"{task}_seed{seed}.mp4"
                    )
                result.pop("pred_images", None)
                result.pop("real_images", None)
                rows.append({"seed": seed, **result})
            if not rows:
                raise ComponentError(f"no held-out episodes of {task} in {encoded} (encode.holdout_episodes is 0?)")
            summary: dict[str, Any] = {
                "episodes": len(rows),
                "action_mae_per_step": per_step_mean([r["action_mae"] for r in rows]),
            }
            summary["action_mae"] = float(np.mean(summary["action_mae_per_step"]))
            if "psnr" in rows[0]:
                summary["psnr_per_step"] = per_step_mean([r["psnr"] for r in rows])
                summary["ssim_per_step"] = per_step_mean([r["ssim"] for r in rows])
                summary["psnr"] = float(np.mean(summary["psnr_per_step"]))
                summary["ssim"] = float(np.mean(summary["ssim_per_step"]))
            per_task[task] = summary
            write_json(tmp / f"{task}.json", rows)
    metrics = {"horizon": horizon, "per_task": per_task}
    for key in ("psnr", "ssim", "action_mae"):
        values = [v[key] for v in per_task.values() if key in v]
        if values:
            metrics[key] = round(float(np.mean(values)), 4)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--encoded", required=True, type=Path)
    parser.add_argument("--demos-root", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--plots", required=True, type=Path)
    args = parser.parse_args(argv)
    params = load_params(args.params)
    from components.integrations.registry import resolve_policy
    from components.integrations.tracking import stage_run

    policy = resolve_policy(args.model_uri)
    metrics = score(
        policy, args.encoded, args.demos_root, list(params.tasks), args.out, params.score.horizon, params.score.videos
    )
    plot = args.plots / "score_per_step.png"
    save_score_plot(metrics["per_task"], plot)
    write_json(args.metrics, metrics)
    with stage_run("score", args.params) as _:
        import mlflow

        flat = {
            f"{task}.{k}": v for task, m in metrics["per_task"].items() for k, v in m.items() if "per_step" not in k
        }
        mlflow.log_metrics({k: float(v) for k, v in flat.items()})
        for task, m in metrics["per_task"].items():
            for key in ("psnr_per_step", "ssim_per_step", "action_mae_per_step"):
                for h, value in enumerate(m.get(key, []), start=1):
                    mlflow.log_metric(f"{task}.{key[:-9]}_by_horizon", value, step=h)
        mlflow.log_artifact(str(plot), "plots")
        for video in sorted((args.out / "videos").glob("*.mp4")):
            mlflow.log_artifact(str(video), "videos")
    log.info("video prediction: %s", json.dumps({k: v for k, v in metrics.items() if k != "per_task"}))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
