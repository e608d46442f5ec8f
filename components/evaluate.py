"""evaluate: closed-loop success rates of a policy in the ManiSkill simulator.

    python -m components.evaluate --params params.yaml --model-uri data/policy \\
        --task PushCube-v1 --out data/eval/PushCube-v1 [--seed-start S --episodes N]

Fair-evaluation rules (ManiSkill's): episode ``i`` resets with seed
``seed_start + i`` (seeds far from the demos' 0, 1, ...); terminations are ignored,
every episode runs ``max_episode_steps``; the environment is rebuilt from the
dataset manifest's own kwargs (same control mode, camera size and shader, robot,
backend). At each decision the real frame is encoded, PAR samples the action chunk
with its KV-cache, the chunk is executed, and the next real frame goes back into the
context. A policy that emits NaN or infinite actions fails that episode; it does
not crash the evaluation.

``--model-uri`` takes a policy folder or an MLflow ``models:/<name>@<alias>`` (or
``runs:/...``) URI. ``--seed-start``/``--episodes`` select a shard; ``merge`` joins
shards. Output: ``episodes.json`` (one row per episode), ``metrics.json``
(success_once, success_at_end, Wilson interval, mean length) and rollout videos.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common import ComponentError, atomic_output, log, read_json, run_cli, write_json
from components.maniskill import (
    camera_names,
    frame_of,
    make_env,
    progress_flags,
    proprio_of,
    proprio_parts,
    scalar,
    step_unobserved,
)
from components.metrics import wilson_interval
from components.params import DEFAULT_PROPRIO, EvaluateParams, load_params
from components.policy import Policy
from par.sampling import rollout_for


def protocol_seeds(params: EvaluateParams, seed_start: int | None, episodes: int | None) -> list[tuple[int, int]]:
    """(env seed, policy sampling seed) of every episode of the shard."""
    if params.protocol == "rdt":
        # RDT's protocol: 10 seed groups 20241201+i of 25 episodes; env seed = base + index.
        base, count = 20241201, 250
        pairs = [(base + k, base + k // 25) for k in range(count)]
    else:
        base, count = params.seed_start, params.episodes
        pairs = [(base + k, base + k) for k in range(count)]
    start = 0 if seed_start is None else seed_start - base
    if seed_start is not None and not 0 <= start < count:
        raise ComponentError(f"--seed-start {seed_start} is outside the protocol's seeds {base}..{base + count - 1}")
    stop = count if episodes is None else min(count, start + episodes)
    return pairs[start:stop]


def run_episode(
    policy: Policy,
    env: Any,
    task_id: int,
    camera: str | list[str],
    env_seed: int,
    policy_seed: int,
    max_steps: int,
    record: bool,
    action_steps: int | None = None,
    action_samples: int = 1,
    parts: Sequence[str] = DEFAULT_PROPRIO,
) -> dict[str, Any]:
    """One closed-loop episode; returns its row (and frames when ``record``).
    ``parts``: the proprio layout the policy was trained on."""
    obs, _ = env.reset(seed=env_seed)
    rollout = rollout_for(
        policy.model,
        torch.tensor([task_id]),
        torch.Generator().manual_seed(policy_seed),
        action_steps=action_steps,
        action_samples=action_samples,
    )
    frames = [frame_of(obs, camera)] if record else []
    success_once, success, steps, failure = False, False, 0, ""
    first_success: int | None = None
    reached: dict[str, bool] = {}  # progress flags true at some step
    policy_seconds = 0.0
    while steps < max_steps:
        started = time.perf_counter()
        latent = policy.encode_frames(frame_of(obs, camera)[None])
        proprio = policy.normalize_proprio(proprio_of(obs, parts)[None]) if policy.model.config.proprio_dim else None
        rollout.observe(latent, proprio)
        chunk = rollout.sample_actions()
        rollout.commit_actions(chunk)
        actions = policy.denormalize_actions(chunk[0])
        policy_seconds += time.perf_counter() - started
        if not np.isfinite(actions).all():
            failure = "policy emitted non-finite actions"
            break
        for k, action in enumerate(actions):
            # Terminations ignored: run to max_steps. Only the frame after the chunk is
            # looked at (or every frame of a recorded episode): render only those.
            if record or k == len(actions) - 1:
                obs, _, _, _, info = env.step(action)
            else:
                info = step_unobserved(env, action)
            steps += 1
            success = bool(scalar(info["success"]))
            for key, flag in progress_flags(info).items():
                reached[key] = reached.get(key, False) or flag
            if success and first_success is None:
                first_success = steps
            success_once |= success
            if record:
                frames.append(frame_of(obs, camera))
            if steps >= max_steps:
                break
    row = {
        "seed": env_seed,
        "policy_seed": policy_seed,
        "success_once": success_once,
        "success_at_end": success and not failure,
        "steps": steps,
        "first_success_step": first_success,
        "policy_seconds": round(policy_seconds, 3),
        "failure": failure,
        "reached": reached,
    }
    if record:
        row["frames"] = np.stack(frames)
    return row


def summarize(rows: list[dict[str, Any]], task: str) -> dict[str, Any]:
    n = len(rows)
    flags = sorted({key for r in rows for key in r.get("reached", {})})
    once = sum(r["success_once"] for r in rows)
    low, high = wilson_interval(once, n)
    return {
        "task": task,
        "episodes": n,
        "success_once": round(once / n, 4) if n else 0.0,
        "success_at_end": round(sum(r["success_at_end"] for r in rows) / n, 4) if n else 0.0,
        "wilson_low": round(low, 4),
        "wilson_high": round(high, 4),
        "mean_episode_steps": round(float(np.mean([r["steps"] for r in rows])), 2) if n else 0.0,
        # Fraction of episodes where each progress flag was ever true (rows from before
        # the flags were recorded count as not reached).
        "reached": {key: round(sum(r.get("reached", {}).get(key, False) for r in rows) / n, 4) for key in flags},
        "failed_to_act": sum(bool(r["failure"]) for r in rows),
        "seeds": [rows[0]["seed"], rows[-1]["seed"]] if n else [],
    }


def check_compatible(policy: Policy, task: str, manifest_info: dict[str, Any] | None) -> dict[str, Any]:
    """The policy's task info, checked against a dataset manifest when one is given."""
    info = policy.task_info(task)
    if manifest_info is not None:
        for key in ("control_mode", "camera", "robot_uids"):
            if manifest_info.get(key) != info.get(key):
                raise ComponentError(
                    f"dataset/model mismatch for {task}: the dataset's {key} is {manifest_info.get(key)!r} "
                    f"but the model was trained with {info.get(key)!r}"
                )
        if proprio_parts(manifest_info) != proprio_parts(info):
            raise ComponentError(
                f"dataset/model mismatch for {task}: the dataset's proprio is {proprio_parts(manifest_info)} "
                f"but the model was trained with {proprio_parts(info)}"
            )
    return info


def write_video(frames: np.ndarray, path: Path, fps: int = 20) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    big = frames.repeat(4, axis=1).repeat(4, axis=2)  # 64 px frames are tiny on screen
    imageio.mimsave(path, list(big), fps=fps, macro_block_size=1)


def evaluate(
    policy: Policy,
    task: str,
    params: EvaluateParams,
    out: Path,
    seed_start: int | None = None,
    episodes: int | None = None,
    manifest: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    info = check_compatible(policy, task, manifest)
    if params.threads:
        torch.set_num_threads(params.threads)
    max_steps = params.max_episode_steps.get(task, params.default_max_episode_steps)
    kwargs = dict(info["env_kwargs"], max_episode_steps=max_steps)
    camera = camera_names(info["camera"])
    pairs = protocol_seeds(params, seed_start, episodes)
    env = make_env(task, kwargs)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        with atomic_output(out) as tmp:
            bar = tqdm(pairs, desc=f"evaluate {task}", unit="ep", disable=not progress)
            for i, (env_seed, policy_seed) in enumerate(bar):
                record = i < params.videos
                row = run_episode(
                    policy,
                    env,
                    policy.task_id(task),
                    camera,
                    env_seed,
                    policy_seed,
                    max_steps,
                    record,
                    params.action_sampling_steps,
                    params.action_samples,
                    proprio_parts(info),
                )
                if record:
                    write_video(row.pop("frames"), tmp / "videos" / f"{task}_seed{env_seed}.mp4")
                rows.append(row)
                bar.set_postfix(success=f"{sum(r['success_once'] for r in rows)}/{len(rows)}")
                if not progress and (i + 1) % 10 == 0:
                    log.info(
                        "%s: %d/%d episodes, %d successes",
                        task,
                        i + 1,
                        len(pairs),
                        sum(r["success_once"] for r in rows),
                    )
            metrics = summarize(rows, task)
            metrics["seconds"] = round(time.perf_counter() - started, 1)
            metrics["max_episode_steps"] = max_steps
            metrics["protocol"] = params.protocol
            write_json(tmp / "episodes.json", rows)
            write_json(tmp / "metrics.json", metrics)
    finally:
        env.close()
    log.info(
        "%s: success_once %.3f [%.3f, %.3f] over %d episodes (%.0f s); reached: %s",
        *(task, metrics["success_once"], metrics["wilson_low"], metrics["wilson_high"], len(rows), metrics["seconds"]),
        ", ".join(f"{k} {v:.2f}" for k, v in metrics["reached"].items()) or "no progress flags",
    )
    return metrics


def merge(shards: list[Path], out: Path) -> dict[str, Any]:
    """Join shard folders of one task into one result (rows ordered by seed)."""
    rows: list[dict[str, Any]] = []
    tasks = set()
    for shard in shards:
        rows += read_json(shard / "episodes.json", "episode rows")
        tasks.add(read_json(shard / "metrics.json", "shard metrics")["task"])
    if len(tasks) != 1:
        raise ComponentError(f"shards hold different tasks {sorted(tasks)}")
    rows.sort(key=lambda r: r["seed"])
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) != len(seeds):
        raise ComponentError("shards overlap: some seeds were evaluated twice")
    metrics = summarize(rows, tasks.pop())
    with atomic_output(out) as tmp:
        write_json(tmp / "episodes.json", rows)
        write_json(tmp / "metrics.json", metrics)
        for shard in shards:
            for video in sorted((shard / "videos").glob("*.mp4")):
                (tmp / "videos").mkdir(exist_ok=True)
                (tmp / "videos" / video.name).write_bytes(video.read_bytes())
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--model-uri", help="policy folder, or models:/<name>@<alias>, runs:/<id>/policy")
    parser.add_argument("--task", help="task to evaluate")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--dataset", type=Path, help="dataset folder whose manifest the model must match")
    parser.add_argument("--seed-start", type=int)
    parser.add_argument("--episodes", type=int)
    parser.add_argument("--merge", nargs="+", type=Path, help="merge these shard folders into --out instead")
    parser.add_argument("--metrics", type=Path, help="also write the metrics JSON here (a DVC metrics file)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.merge:
        metrics = merge(args.merge, args.out)
        if args.metrics:
            write_json(args.metrics, metrics)
        print(json.dumps(metrics))
        return
    if not args.model_uri or not args.task:
        parser.error("--model-uri and --task are required (unless --merge)")
    from components.registry import resolve_policy

    params = load_params(args.params)
    policy = resolve_policy(args.model_uri)
    manifest = read_json(args.dataset / "manifest.json", "manifest") if args.dataset else None
    metrics = evaluate(
        policy,
        args.task,
        params.evaluate,
        args.out,
        args.seed_start,
        args.episodes,
        manifest,
        progress=not args.no_progress,
    )
    if args.metrics:
        write_json(args.metrics, metrics)
    log_to_mlflow(args.params, args.task, args.model_uri, args.out, metrics)
    print(json.dumps(metrics))


def log_to_mlflow(params_path: Path, task: str, model_uri: str, out: Path, metrics: dict[str, Any]) -> None:
    """One MLflow run per evaluated task (shard): metrics, per-episode rows, videos."""
    from components.tracking import stage_run

    with stage_run(f"evaluate-{task}", params_path, tags={"par.task": task, "par.model_uri": model_uri}):
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        mlflow.log_metrics({f"reached.{k}": float(v) for k, v in metrics.get("reached", {}).items()})
        mlflow.log_artifact(str(out / "episodes.json"))
        for video in sorted((out / "videos").glob("*.mp4")):
            mlflow.log_artifact(str(video), "videos")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
