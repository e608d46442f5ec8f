"""collect: ManiSkill motion-planning demonstrations, recorded in the training form.

    python -m components.collect --params params.yaml --task PushCube-v1 --out data/demos/PushCube-v1

ManiSkill's own motion planner (``mani_skill.examples.motionplanning``) solves each
seeded episode in ``pd_joint_pos``; a recording wrapper keeps what the environment
returns at every step: the camera frame, the proprio vector (joint positions, then the
goal the camera cannot see: ``components.integrations.maniskill.proprio_of``), the action and the success flag. The
planner's control mode is the paper's, so no replay pass is needed: frames are
rendered once, while planning, by the very camera (size and shader) that evaluation
will use. Seeds are tried in order from ``seed_start``; the dataset is the first N
whose plans succeed, bit for bit the same whatever the worker count (each episode
starts from a rebuilt scene: ``Recorder.reset``).

Output (one folder a task, written atomically)::

    manifest.json                  task, control mode, camera, counts, seeds, versions,
                                   action/proprio statistics, the env kwargs to rebuild
    episodes/episode_00000.npz     frames (T+1, H, W, 3) uint8, actions (T, A) float32,
                                   proprio (T+1, D) float32, success (T,) bool, seed ()
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.console import Progress, at_least, log, run_cli
from components.errors import ComponentError
from components.formats.files import atomic_output, write_json
from components.formats.params import CollectParams, load_params
from components.integrations.maniskill import camera_names, env_kwargs, frame_shape, planner_for, versions
from components.integrations.planner import attempts

MAX_EPISODE_STEPS = 1000  # the planner decides when an episode ends, not the TimeLimit
FORMAT = "par-demos-v2"


@dataclass
class Tally:
    """What a collection kept, what it tried, and what the planner said."""

    kept: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    notices: Counter = field(default_factory=Counter)
    attempts: int = 0


def _keep(result: dict[str, Any], tally: Tally, episodes: Path, max_steps: int | None) -> None:
    """Write a successful plan as the next episode file, or record why it was refused."""
    tally.attempts += 1
    tally.notices.update(result["notices"])
    if result["ok"] and max_steps is not None and len(result["actions"]) > max_steps:
        reason = f"plan too long: {len(result['actions'])} steps > validate.max_episode_steps {max_steps}"
        result = {"seed": result["seed"], "ok": False, "reason": reason}
    if not result["ok"]:
        tally.failures.append({"seed": result["seed"], "reason": result["reason"]})
        return
    np.savez_compressed(
        episodes / f"episode_{len(tally.kept):05d}.npz",
        **{k: result[k] for k in ("frames", "actions", "proprio", "success")},
        seed=np.int64(result["seed"]),
    )
    tally.kept.append(
        {k: result[k] for k in ("seed", "actions", "proprio", "action_space")} | {"T": len(result["actions"])}
    )


def collect_task(
    task: str, params: CollectParams, out: Path, progress: bool = True, max_steps: int | None = None
) -> dict[str, Any]:
    """Collect ``params.demos_for(task)`` successful demos of ``task`` into ``out``.

    ``max_steps`` (the CLI passes ``validate.max_episode_steps``): a successful plan
    longer than that counts as a failed attempt and the next seed is tried, so collect
    never writes a dataset that validate then refuses. The planner sometimes succeeds
    the long way round (a StackCube plan of 807 steps in 611 attempts, where the demos
    take 80-131): a demo a policy should not learn from."""
    planner_for(task)  # fail fast on tasks without a planner
    camera = params.camera_for(task)
    kwargs = env_kwargs(params.control_mode, camera, params.robot_uids, params.sim_backend, MAX_EPISODE_STEPS)
    wanted = params.demos_for(task)
    seeds = range(params.seed_start, params.seed_start + math.ceil(wanted * params.max_attempts_per_demo))
    started, tally = time.perf_counter(), Tally()
    with atomic_output(out) as tmp, Progress(f"collect {task}", wanted, "demos", enabled=progress) as bar:
        (tmp / "episodes").mkdir()
        results = attempts(task, kwargs, camera_names(camera.manifest()), params.proprio, seeds, params.workers)
        for result in results:
            _keep(result, tally, tmp / "episodes", max_steps)
            bar.update(len(tally.kept) - bar.done, note=f"planner success {len(tally.kept) / tally.attempts:.0%}")
            if len(tally.kept) == wanted:
                results.close()
                break
        if len(tally.kept) < wanted:
            why = Counter(f["reason"].split(":")[0] for f in tally.failures).most_common()
            raise ComponentError(
                f"{task}: only {len(tally.kept)} of {wanted} demos succeeded in {tally.attempts} planner attempts "
                f"(seeds {seeds.start}..{seeds.start + tally.attempts - 1}; failed: "
                f"{', '.join(f'{n} {reason}' for reason, n in why)}); raise collect.max_attempts_per_demo"
            )
        manifest = build_manifest(task, params, kwargs, tally)
        write_json(tmp / "manifest.json", manifest)
    seconds = time.perf_counter() - started
    log.info(
        "collected %d %s demos in %.0f s (%.2f demos/s), planner success %d/%d; planner notices: %s",
        *(wanted, task, seconds, wanted / seconds, wanted, tally.attempts),
        ", ".join(f"{n} {text!r}" for text, n in tally.notices.most_common()) or "none",
    )
    return manifest


def build_manifest(task: str, params: CollectParams, kwargs: dict[str, Any], tally: Tally) -> dict[str, Any]:
    """The dataset's manifest. It holds no timing (the log has it), so collecting the
    same params again writes the same bytes and DVC sees the same data."""
    kept, failures, attempts = tally.kept, tally.failures, tally.attempts
    actions = np.concatenate([k["actions"] for k in kept])
    proprio = np.concatenate([k["proprio"] for k in kept])
    low, high = kept[0]["action_space"]
    lengths = [k["T"] for k in kept]
    camera = params.camera_for(task)
    return {
        "format": FORMAT,
        "task": task,
        "control_mode": params.control_mode,
        "robot_uids": params.robot_uids,
        "camera": camera.manifest(),
        "frame_shape": frame_shape(camera),
        "env_kwargs": kwargs,
        "episodes": [
            {"file": f"episodes/episode_{i:05d}.npz", "seed": k["seed"], "steps": k["T"]} for i, k in enumerate(kept)
        ],
        "counts": {
            "episodes": len(kept),
            "steps": int(sum(lengths)),
            "attempts": attempts,
            "planner_failures": len(failures),
            "min_steps": int(min(lengths)),
            "max_steps": int(max(lengths)),
            "mean_steps": float(np.mean(lengths)),
        },
        "seeds": [k["seed"] for k in kept],
        "failed_seeds": failures,
        # What the planner printed over all attempts ("screw plan failed": a motion it retried).
        "planner_notices": dict(sorted(tally.notices.items())),
        "action_dim": int(actions.shape[1]),
        "proprio": params.proprio,
        "proprio_dim": int(proprio.shape[1]),
        "action_min": actions.min(0).tolist(),
        "action_max": actions.max(0).tolist(),
        "action_space_low": low.tolist(),
        "action_space_high": high.tolist(),
        "proprio_min": proprio.min(0).tolist(),
        "proprio_max": proprio.max(0).tolist(),
        "proprio_mean": proprio.mean(0).tolist(),
        "proprio_std": proprio.std(0).tolist(),
        "versions": versions(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (section collect)")
    parser.add_argument("--task", required=True, help="ManiSkill task id, e.g. PushCube-v1")
    parser.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    parser.add_argument(
        "--demos", type=at_least(1), help="this many demos (overrides collect.demos_per_task/demos_by_task)"
    )
    parser.add_argument("--workers", type=at_least(1), help="override collect.workers")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    overrides = {}
    if args.demos is not None:
        overrides["collect.demos_per_task"] = args.demos
        overrides["collect.demos_by_task"] = {}
    if args.workers is not None:
        overrides["collect.workers"] = args.workers
    params = load_params(args.params, overrides)
    max_steps = params.validate_params.max_episode_steps
    collect_task(args.task, params.collect, args.out, progress=not args.no_progress, max_steps=max_steps)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
