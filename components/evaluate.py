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

``evaluate.num_envs`` environments (worker processes, gymnasium's vector API:
``components.integrations.chunk_env``) run a wave of that many episodes in lockstep,
with one batched policy call a decision (the KV-cache's batch dimension). Each episode
keeps its env seed and its own sampling generator, so its outcome is the same whatever
``num_envs`` is; 0 picks one env a core.

``--model-uri`` takes a policy folder or an MLflow ``models:/<name>@<alias>`` (or
``runs:/...``) URI. With ``evaluate.shards`` > 1 the seeds are split into that many
contiguous shards evaluated by parallel worker processes and merged into one result.
``--seed-start``/``--episodes`` evaluate one shard by hand (on another machine, say);
``--merge`` joins such shards. Output: ``episodes.json`` (one row per episode),
``metrics.json`` (success_once, success_at_end, Wilson interval, mean length) and
rollout videos.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.console import Progress, at_least, log, run_cli
from components.errors import ComponentError
from components.formats.files import atomic_output, read_json, write_json
from components.formats.params import EvaluateParams, load_params
from components.formats.plots import write_video
from components.formats.policy import Policy
from components.integrations.chunk_env import ChunkEnvSpec, vector_env
from components.integrations.maniskill import camera_names, proprio_parts
from components.ml.metrics import wilson_interval
from par.invariant import batch_invariant
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


GPU_ENVS = 128  # envs of one GPU simulation when evaluate.num_envs is 0


def envs_for(params: EvaluateParams) -> int:
    """``evaluate.num_envs``, or for 0 (auto): on the CPU one env a core (at most 8) of this
    process's share; on the GPU 128."""
    if params.num_envs:
        return params.num_envs
    if params.sim == "gpu":
        return GPU_ENVS
    return max(1, min(8, (os.cpu_count() or 1) // params.shards))


def chunk_env_spec(policy: Policy, task: str, info: dict[str, Any], max_steps: int) -> ChunkEnvSpec:
    """What an evaluation env of ``task`` needs: the demos' env and camera, the policy's shapes."""
    c = policy.model.config
    return ChunkEnvSpec(
        task=task, env_kwargs=info["env_kwargs"], cameras=camera_names(info["camera"]), proprio=proprio_parts(info),
        frame_shape=tuple(policy.info["frame_shape"]), proprio_dim=c.proprio_dim, chunk_len=c.chunk_len,
        action_dim=c.action_dim, max_steps=max_steps,
    )  # fmt: skip


def run_wave(
    policy: Policy, envs: Any, task_id: int, pairs: list[tuple[int, int]], record: list[bool], params: EvaluateParams
) -> list[dict[str, Any]]:
    """Episodes ``pairs`` (env seed, policy seed), at most one an env, stepped in lockstep:
    one batched policy call a decision. Each episode has its own sampling generator and
    the policy runs batch-invariant, so an episode's actions, bit for bit, do not depend
    on the batch it ran in. Returns their rows."""
    n, slots = len(pairs), envs.num_envs
    envs.set_attr("record", record + [False] * (slots - n))
    obs, _ = envs.reset(seed=[s for s, _ in pairs] + [pairs[-1][0]] * (slots - n))
    generators = [torch.Generator().manual_seed(p) for _, p in pairs]
    rollout = rollout_for(
        policy.model, torch.full((n,), task_id), generators, action_steps=params.action_sampling_steps,
        action_samples=params.action_samples,
    )  # fmt: skip
    over, policy_seconds = np.arange(slots) >= n, 0.0
    idle = np.full((slots - n, *envs.single_action_space.shape), np.nan, np.float32)
    # Each episode's numbers as if it ran alone (par.invariant). The GPU simulation does not
    # reproduce the CPU's trajectories anyway: its hundreds of envs get one batched call.
    invariant = functools.partial(batch_invariant, n) if params.sim == "cpu" else contextlib.nullcontext
    while not over.all():
        started = time.perf_counter()
        with invariant():
            latent = policy.encode_frames(obs["frame"][:n])
            proprio = policy.normalize_proprio(obs["proprio"][:n]) if "proprio" in obs else None
            rollout.observe(latent, proprio)
            chunk = rollout.sample_actions()
            rollout.commit_actions(chunk)
        actions = np.concatenate([policy.denormalize_actions(chunk).astype(np.float32), idle])
        policy_seconds += time.perf_counter() - started
        obs, _, _, _, info = envs.step(actions)
        over = np.asarray(info["over"], dtype=bool) | (np.arange(slots) >= n)
    rows = list(envs.call("row"))[:n]
    for row, (_, policy_seed) in zip(rows, pairs, strict=True):
        row |= {"policy_seed": policy_seed, "policy_seconds": round(policy_seconds / n, 3)}
    return rows


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
    """Evaluate ``policy`` on ``task`` (the protocol's seeds, or one shard of them) into ``out``."""
    info = check_compatible(policy, task, manifest)
    if params.threads:
        torch.set_num_threads(params.threads)
    max_steps = params.max_episode_steps.get(task, params.default_max_episode_steps)
    pairs = protocol_seeds(params, seed_start, episodes)
    num_envs = min(envs_for(params), len(pairs))
    envs = vector_env(chunk_env_spec(policy, task, info, max_steps), num_envs, params.sim)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    try:
        with atomic_output(out) as tmp, Progress(f"evaluate {task}", len(pairs), "episodes", enabled=progress) as bar:
            for first in range(0, len(pairs), num_envs):
                wave = pairs[first : first + num_envs]
                record = [first + k < params.videos for k in range(len(wave))]
                for row in run_wave(policy, envs, policy.task_id(task), wave, record, params):
                    if "frames" in row:
                        write_video(row.pop("frames"), tmp / "videos" / f"{task}_seed{row['seed']}.mp4")
                    rows.append(row)
                    bar.update(note=f"{sum(r['success_once'] for r in rows)} successes")
            metrics = summarize(rows, task) | {"policy_sha256": policy.sha256, "num_envs": num_envs}
            metrics["seconds"] = round(time.perf_counter() - started, 1)
            metrics |= {"max_episode_steps": max_steps, "protocol": params.protocol}
            write_json(tmp / "episodes.json", rows)
            write_json(tmp / "metrics.json", metrics)
    finally:
        envs.close()
    log.info(
        "%s: success_once %.3f [%.3f, %.3f] over %d episodes (%.0f s); reached: %s",
        *(task, metrics["success_once"], metrics["wilson_low"], metrics["wilson_high"], len(rows), metrics["seconds"]),
        ", ".join(f"{k} {v:.2f}" for k, v in metrics["reached"].items()) or "no progress flags",
    )
    return metrics


def shard_plan(params: EvaluateParams) -> list[tuple[int, int]]:
    """(first env seed, episodes) of each of ``evaluate.shards`` contiguous seed shards;
    the last one may be short."""
    pairs = protocol_seeds(params, None, None)
    per_shard = -(-len(pairs) // params.shards)
    return [(pairs[k][0], len(pairs[k : k + per_shard])) for k in range(0, len(pairs), per_shard)]


def _evaluate_shard(job: dict[str, Any]) -> Path:
    """A worker process's shard: load the policy, evaluate its seeds into its folder."""
    from components.integrations.registry import resolve_policy

    torch.set_num_threads(job["threads"])
    params: EvaluateParams = job["params"]
    evaluate(
        resolve_policy(job["model_uri"]), job["task"], params.model_copy(update={"threads": job["threads"]}),
        job["out"], job["seed_start"], job["episodes"], job["manifest"], progress=False,
    )  # fmt: skip
    return job["out"]


def evaluate_sharded(
    model_uri: str, task: str, params: EvaluateParams, out: Path, manifest: dict | None, progress: bool = True
) -> dict[str, Any]:
    """The protocol's seeds in ``evaluate.shards`` parallel processes, merged into ``out``.
    Only the first shard records videos; each worker takes its share of the cores."""
    plan = shard_plan(params)
    threads = params.threads or max(1, (os.cpu_count() or 1) // len(plan))
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None, prefix=".shards-") as work:
        jobs = [
            dict(model_uri=model_uri, task=task, params=params.model_copy(update={"videos": 0 if k else params.videos}),
                 out=Path(work) / f"shard-{k}", seed_start=first, episodes=n, manifest=manifest, threads=threads)
            for k, (first, n) in enumerate(plan)
        ]  # fmt: skip
        log.info("%s: %d shards of %s episodes, %d threads each", task, len(plan), [n for _, n in plan], threads)
        bar = Progress(f"evaluate {task}", len(plan), "shards", enabled=progress)
        with bar, mp.get_context("spawn").Pool(len(plan)) as pool:
            for _ in pool.imap_unordered(_evaluate_shard, jobs):
                bar.update()
        return merge([job["out"] for job in jobs], out)


def merge(shards: list[Path], out: Path) -> dict[str, Any]:
    """Join shard folders of one task into one result (rows ordered by seed)."""
    rows: list[dict[str, Any]] = []
    tasks, policies = set(), set()
    for shard in shards:
        rows += read_json(shard / "episodes.json", "episode rows")
        metrics = read_json(shard / "metrics.json", "shard metrics")
        tasks.add(metrics.get("task"))
        policies.add(metrics.get("policy_sha256"))
    if len(tasks) != 1:
        raise ComponentError(f"shards hold different tasks {sorted(map(str, tasks))}")
    if len(policies) != 1:
        raise ComponentError(f"shards evaluated different policies {sorted(map(str, policies))}")
    rows.sort(key=lambda r: r["seed"])
    seeds = [r["seed"] for r in rows]
    if len(set(seeds)) != len(seeds):
        raise ComponentError("shards overlap: some seeds were evaluated twice")
    metrics = summarize(rows, tasks.pop()) | {"policy_sha256": policies.pop()}
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
    parser.add_argument("--seed-start", type=at_least(0), help="one shard by hand: its first env seed")
    parser.add_argument("--episodes", type=at_least(1), help="one shard by hand: its number of episodes")
    parser.add_argument("--merge", nargs="+", type=Path, help="merge these shard folders into --out instead")
    parser.add_argument("--metrics", type=Path, help="also write the metrics JSON here (a DVC metrics file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.merge:
        metrics = merge(args.merge, args.out)
        if args.metrics:
            write_json(args.metrics, metrics)
        print(json.dumps(metrics))
        return
    if not args.model_uri or not args.task:
        parser.error("--model-uri and --task are required (unless --merge)")
    from components.integrations.registry import resolve_policy

    params = load_params(args.params)
    policy = resolve_policy(args.model_uri)
    manifest = read_json(args.dataset / "manifest.json", "manifest") if args.dataset else None
    progress = not args.no_progress
    if params.evaluate.shards > 1 and args.seed_start is None and args.episodes is None:
        check_compatible(policy, args.task, manifest)
        metrics = evaluate_sharded(args.model_uri, args.task, params.evaluate, args.out, manifest, progress)
    else:
        metrics = evaluate(
            policy, args.task, params.evaluate, args.out, args.seed_start, args.episodes, manifest, progress
        )
    if args.metrics:
        write_json(args.metrics, metrics)
    log_to_mlflow(args.params, args.task, args.model_uri, args.out, metrics)
    print(json.dumps(metrics))


def log_to_mlflow(params_path: Path, task: str, model_uri: str, out: Path, metrics: dict[str, Any]) -> None:
    """One MLflow run per evaluated task (shard): metrics, per-episode rows, videos."""
    from components.integrations.tracking import stage_run

    with stage_run(f"evaluate-{task}", params_path, tags={"par.task": task, "par.model_uri": model_uri}):
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        mlflow.log_metrics({f"reached.{k}": float(v) for k, v in metrics.get("reached", {}).items()})
        mlflow.log_artifact(str(out / "episodes.json"))
        for video in sorted((out / "videos").glob("*.mp4")):
            mlflow.log_artifact(str(video), "videos")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
