"""ManiSkill's motion planner run in worker processes, recording what the camera sees.

``collect`` keeps every recorded array of a successful plan as a demonstration;
``videos`` keeps only its frames (an action-free clip). Both get, in seed order, one
result a seed from :func:`attempts`, planned in ``workers`` spawned processes.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from components.formats.params import DEFAULT_PROPRIO
from components.integrations.maniskill import (
    frame_of,
    freeze_heap,
    make_env,
    planner_for,
    proprio_of,
    scalar,
    thaw_heap,
)


class Recorder:
    """Wraps an env; keeps frames, proprio, actions and success of the current episode."""

    def __init__(self, env: Any, camera: str | list[str], proprio: Sequence[str] = DEFAULT_PROPRIO) -> None:
        self.env, self.camera, self.parts = env, camera, proprio
        self.frames: list[np.ndarray] = []
        self.proprio: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.success: list[bool] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    @property
    def unwrapped(self) -> Any:
        return self.env.unwrapped

    def reset(self, **kwargs: Any) -> tuple:
        # Rebuild the scene on every reset. A plain reset does not undo all that an
        # earlier episode's planning left behind: the same seed planned second in an
        # env differs from it planned first (actions by up to 1e-5, contacts grow it),
        # so a pool's scheduling would decide the data. Rebuilt, an episode depends on
        # its seed alone, whatever the worker count, for about 0.25 s an episode.
        kwargs["options"] = {**(kwargs.get("options") or {}), "reconfigure": True}
        obs, info = self.env.reset(**kwargs)
        self.frames, self.proprio = [frame_of(obs, self.camera)], [proprio_of(obs, self.parts)]
        self.actions, self.success = [], []
        return obs, info

    def step(self, action: Any) -> tuple:
        obs, reward, terminated, truncated, info = self.env.step(action)
        action = action.cpu().numpy() if hasattr(action, "cpu") else action
        self.actions.append(np.asarray(action, dtype=np.float32).reshape(-1))
        self.frames.append(frame_of(obs, self.camera))
        self.proprio.append(proprio_of(obs, self.parts))
        self.success.append(bool(scalar(info["success"])))
        return obs, reward, terminated, truncated, info


_WORKER: dict[str, Any] = {}


def _init_worker(task: str, kwargs: dict[str, Any], camera: list[str], proprio: list[str]) -> None:
    _WORKER["env"] = Recorder(make_env(task, kwargs), camera, proprio)
    _WORKER["solve"] = planner_for(task)
    freeze_heap()  # every attempt rebuilds the scene


def _attempt(seed: int) -> dict[str, Any]:
    """Plan one seeded episode; return its arrays, or why it failed. What the planner
    prints ("screw plan failed" when it retries a motion) is counted, not shown."""
    env, solve = _WORKER["env"], _WORKER["solve"]
    printed = io.StringIO()
    reason = None
    try:
        with contextlib.redirect_stdout(printed):
            result = solve(env, seed=seed, debug=False, vis=False)
    except Exception as exc:  # the planner raises on unreachable poses
        result, reason = -1, f"planner error: {exc}"
    notices = Counter(line.strip() for line in printed.getvalue().splitlines() if line.strip())
    if reason is None and ((isinstance(result, int) and result == -1) or not env.actions):
        reason = "no motion plan"
    if reason is None and not env.success[-1]:
        reason = "plan ended without success"
    if reason is not None:
        return {"seed": seed, "ok": False, "reason": reason, "notices": notices}
    return {
        "seed": seed,
        "ok": True,
        "notices": notices,
        "frames": np.stack(env.frames),
        "proprio": np.stack(env.proprio),
        "actions": np.stack(env.actions),
        "success": np.asarray(env.success, dtype=bool),
        "action_space": (env.action_space.low.reshape(-1), env.action_space.high.reshape(-1)),
    }


def attempts(
    task: str, kwargs: dict[str, Any], camera: list[str], proprio: list[str], seeds: range, workers: int
) -> Iterator[dict[str, Any]]:
    """Yield attempt results in seed order, planning in ``workers`` processes."""
    if workers == 1:
        _init_worker(task, kwargs, camera, proprio)
        try:
            yield from map(_attempt, seeds)
        finally:
            _WORKER.pop("env").close()
            thaw_heap()
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(task, kwargs, camera, proprio)) as pool:
        yield from pool.imap(_attempt, seeds, chunksize=1)
        pool.terminate()
