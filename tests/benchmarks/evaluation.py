"""Benchmark of closed-loop evaluation: episodes per minute against ``evaluate.num_envs``;
prints one JSON object.

    python -m tests.benchmarks.evaluation --policy data/policy --task PushCube-v1 \\
        --episodes 8 --envs 1 2 4 8

For each N the same episodes (the protocol's first ``--episodes`` seeds) run through
``components.evaluate.run_wave`` in waves of N envs, and the figures are taken in this
one run, one configuration after another (never overlapping):

* ``reference``: the evaluation before batching: one env in this process, one episode at a
  time, the policy outside the batch-invariant mode;
* for each N: wall seconds (worker start-up apart: ``startup_s``), episodes per minute
  and their ratio to the reference, the policy's share of the wall time, and whether
  every episode's outcome equals the reference's (``par.invariant`` promises it);
* ``parts``: what one episode costs in one env, step by step: a control step's physics
  alone, a rendered step, and one policy decision (batch of 1), so the bound is visible.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import torch

import components.evaluate as evaluation
from components.formats.params import load_params
from components.formats.policy import Policy, load_policy
from components.integrations.chunk_env import vector_env
from components.integrations.maniskill import make_env, step_unobserved

OUTCOME = ("seed", "success_once", "success_at_end", "steps", "first_success_step", "failure", "reached")


def run(policy: Policy, task: str, num_envs: int, pairs: list, params: Any, invariant: bool = True) -> dict:
    """Every episode of ``pairs`` in waves of ``num_envs``; timings and rows."""
    info = policy.task_info(task)
    max_steps = params.max_episode_steps.get(task, params.default_max_episode_steps)
    spec = evaluation.chunk_env_spec(policy, task, info, max_steps)
    started = time.perf_counter()
    saved = evaluation.batch_invariant
    evaluation.batch_invariant = saved if invariant else contextlib.nullcontext
    try:
        with closing(vector_env(spec, num_envs)) as envs:
            envs.reset(seed=[s for s, _ in pairs[:num_envs]])  # workers started and their scenes built
            ready = time.perf_counter()
            rows = []
            for first in range(0, len(pairs), num_envs):
                wave = pairs[first : first + num_envs]
                rows += evaluation.run_wave(policy, envs, policy.task_id(task), wave, [False] * len(wave), params)
            done = time.perf_counter()
    finally:
        evaluation.batch_invariant = saved
    wall = done - ready
    return {
        "num_envs": num_envs, "startup_s": round(ready - started, 1), "wall_s": round(wall, 1),
        "episodes_per_min": round(len(rows) / wall * 60, 2),
        "policy_share": round(sum(r["policy_seconds"] for r in rows) / wall, 3),
        "success_once": sum(r["success_once"] for r in rows), "rows": [{k: r[k] for k in OUTCOME} for r in rows],
    }  # fmt: skip


def parts(policy: Policy, task: str, params: Any) -> dict[str, float]:
    """Milliseconds of one env's physics step, rendered step, and one policy decision."""
    info = policy.task_info(task)
    env = make_env(task, dict(info["env_kwargs"], max_episode_steps=1000))
    try:
        env.reset(seed=0)
        action = np.zeros(env.action_space.shape[-1], np.float32)
        started = time.perf_counter()
        for _ in range(40):
            step_unobserved(env, action)
        physics = (time.perf_counter() - started) / 40
        started = time.perf_counter()
        for _ in range(10):
            env.step(action)
        rendered = (time.perf_counter() - started) / 10
    finally:
        env.close()
    one = run(policy, task, 1, [(params.seed_start, params.seed_start)], params)
    decisions = -(-one["rows"][0]["steps"] // policy.model.config.chunk_len)
    return {
        "physics_step_ms": round(physics * 1e3, 2), "rendered_step_ms": round(rendered * 1e3, 2),
        "policy_decision_ms": round(one["policy_share"] * one["wall_s"] / decisions * 1e3, 1),
        "chunk_len": policy.model.config.chunk_len,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, required=True, help="a policy folder (data/policy)")
    parser.add_argument("--task", default="PushCube-v1")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the policy (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(args.params).evaluate
    policy = load_policy(args.policy)
    pairs = evaluation.protocol_seeds(params, None, None)[: args.episodes]
    report: dict[str, Any] = {"cores": os.cpu_count(), "threads": torch.get_num_threads(), "episodes": len(pairs)}
    report["parts"] = parts(policy, args.task, params)
    reference = run(policy, args.task, 1, pairs, params, invariant=False)
    report["reference"] = {k: v for k, v in reference.items() if k != "rows"}
    results = [run(policy, args.task, n, pairs, params) for n in args.envs]
    for result in results:
        result["ratio_to_reference"] = round(result["episodes_per_min"] / reference["episodes_per_min"], 2)
        result["same_outcomes_as_reference"] = result.pop("rows") == reference["rows"]
    report["runs"] = results
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
