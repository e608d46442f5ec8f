"""Closed-loop evaluation's environments: one ManiSkill env behind a gymnasium ``Env``
whose step executes a whole action chunk, and N of them in gymnasium's vector API.

``ChunkEnv`` keeps a fair evaluation's rules (terminations ignored, every episode runs
``max_steps``) and the episode's record (``Episode``): its step takes a chunk (L, A) of
denormalised actions, steps them (only the last one rendered, unless the episode is
recorded: ``maniskill.step_unobserved``) and returns the frame and proprio after the
chunk. A non-finite chunk fails the episode without stepping (a NaN-emitting policy
fails its episode, it does not crash the run), and once an episode is over every step
is a no-op, so a batch steps its envs in lockstep while some of them idle.

``vector_env`` builds N of them: gymnasium's ``AsyncVectorEnv`` (one worker process
each, observations through shared memory, autoreset disabled: the evaluation resets
each wave of episodes with its seeds) or, for N = 1, ``SyncVectorEnv`` in this process.
The ManiSkill env is made on the first reset, in the process that steps it, so the
spaces are declared from the policy's shapes and the vector env's probe costs nothing.

On a GPU, ``GpuChunkEnvs`` runs the N envs as one ManiSkill GPU simulation
(``physx_cuda``, N in the hundreds) behind the same calls. PhysX on the GPU does not
reproduce the CPU simulation's trajectories, so its success rates are compared with
GPU evaluations only. It has not run here (no GPU): its code path is tested with the
CPU simulation's single env.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from components.integrations.maniskill import (
    frame_of,
    freeze_heap,
    make_env,
    progress_flags,
    proprio_of,
    scalar,
    step_unobserved,
    thaw_heap,
)

NON_FINITE = "policy emitted non-finite actions"


@dataclass
class Episode:
    """What one closed-loop episode did so far."""

    steps: int = 0
    success: bool = False
    success_once: bool = False
    first_success: int | None = None
    failure: str = ""
    reached: dict[str, bool] = field(default_factory=dict)  # progress flags true at some step
    frames: list[np.ndarray] = field(default_factory=list)

    def record_step(self, info: dict, env: int = 0) -> None:
        """Count one control step of env ``env`` of the simulation that reported ``info``."""
        self.steps += 1
        self.success = bool(scalar(info["success"], env))
        for key, flag in progress_flags(info, env).items():
            self.reached[key] = self.reached.get(key, False) or flag
        if self.success and self.first_success is None:
            self.first_success = self.steps
        self.success_once |= self.success

    def over(self, max_steps: int) -> bool:
        """Ended: it failed to act, or it ran its ``max_steps``."""
        return bool(self.failure) or self.steps >= max_steps

    def row(self, env_seed: int) -> dict[str, Any]:
        row = {
            "seed": env_seed,
            "success_once": self.success_once,
            "success_at_end": self.success and not self.failure,
            "steps": self.steps,
            "first_success_step": self.first_success,
            "failure": self.failure,
            "reached": self.reached,
        }
        if self.frames:
            row["frames"] = np.stack(self.frames)
        return row


@dataclass(frozen=True)
class ChunkEnvSpec:
    """Everything a worker needs to build its env (picklable: workers are spawned)."""

    task: str
    env_kwargs: dict[str, Any]
    cameras: list[str]
    proprio: list[str]  # the proprio layout the policy reads; [] for none
    frame_shape: tuple[int, int, int]
    proprio_dim: int
    chunk_len: int
    action_dim: int
    max_steps: int


class ChunkEnv(gym.Env):
    """One evaluation env whose step executes an action chunk; see the module's doc.
    Set ``record`` before a reset to keep every frame of that episode."""

    def __init__(self, spec: ChunkEnvSpec) -> None:
        self.setup = spec
        self.record = False
        spaces = {"frame": gym.spaces.Box(0, 255, spec.frame_shape, np.uint8)}
        if spec.proprio_dim:
            spaces["proprio"] = gym.spaces.Box(-np.inf, np.inf, (spec.proprio_dim,), np.float32)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (spec.chunk_len, spec.action_dim), np.float32)
        self._env: Any = None
        self._obs: dict[str, np.ndarray] = {}
        self._episode = Episode()
        self._seed = -1

    def _observe(self, obs: dict) -> dict[str, np.ndarray]:
        self._obs = {"frame": frame_of(obs, self.setup.cameras)}
        if self.setup.proprio_dim:
            self._obs["proprio"] = proprio_of(obs, self.setup.proprio)
        return self._obs

    @property
    def over(self) -> bool:
        return self._episode.over(self.setup.max_steps)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """A new episode in a scene built afresh: ManiSkill's CPU reset keeps a trace of the
        previous episode (~1e-7 in the next one's trajectory, enough to move a first success
        by a step), so an env that ran other episodes first would not give a seed's episode
        as a fresh env does. Rebuilding costs ~0.07 s an episode here, the heap frozen (docs/performance.md)."""
        if self._env is None:
            self._env = make_env(self.setup.task, dict(self.setup.env_kwargs, max_episode_steps=self.setup.max_steps))
            obs, _ = self._env.reset(seed=seed)  # the first reset builds the scene
            freeze_heap()  # every later reset rebuilds it
        else:
            obs, _ = self._env.reset(seed=seed, options={"reconfigure": True})
        self._seed = -1 if seed is None else seed
        observed = self._observe(obs)
        self._episode = Episode(frames=[observed["frame"]] if self.record else [])
        return observed, {"over": False}

    def step(self, actions: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """Execute a chunk; the observation after it. Terminations are never reported
        (the vector env would ask for a reset): ``info["over"]`` says the episode ended."""
        if not self.over:
            if np.isfinite(actions).all():
                self._execute(actions)
            else:
                self._episode.failure = NON_FINITE
        return self._obs, 0.0, False, False, {"over": self.over}

    def _execute(self, actions: np.ndarray) -> None:
        obs = None
        for k, action in enumerate(actions):
            if self.record or k == len(actions) - 1:
                obs, _, _, _, info = self._env.step(action)
            else:
                info = step_unobserved(self._env, action)
            self._episode.record_step(info)
            if self.record:
                self._episode.frames.append(frame_of(obs, self.setup.cameras))
            if self._episode.steps >= self.setup.max_steps:
                break
        if obs is not None:  # None: the episode ended inside the chunk (its last frame unused)
            self._observe(obs)

    def row(self) -> dict[str, Any]:
        """The episode's row (its frames too when it was recorded)."""
        return self._episode.row(self._seed)

    def state(self) -> np.ndarray:
        """The simulation's full state now (ManiSkill's flattened ``get_state``): what two
        runs of a seed's episode are compared by, to the last bit."""
        return self._env.unwrapped.get_state().cpu().numpy()

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
            thaw_heap()


class GpuChunkEnvs:
    """``num_envs`` evaluation envs in one ManiSkill simulation (``physx_cuda`` by
    default): the calls of gymnasium's vector API that evaluation makes (``set_attr``
    of ``record``, ``reset`` with a seed an env, ``step`` of a chunk an env, ``call`` of
    ``row``), with ChunkEnv's rules. One simulation steps every env at every step: an env
    whose episode is over steps zero actions, and its record stays as the episode ended."""

    def __init__(self, spec: ChunkEnvSpec, num_envs: int, sim_backend: str = "physx_cuda") -> None:
        self.setup, self.num_envs = spec, num_envs
        self.single_action_space = gym.spaces.Box(-np.inf, np.inf, (spec.chunk_len, spec.action_dim), np.float32)
        kwargs = dict(spec.env_kwargs, num_envs=num_envs, sim_backend=sim_backend, max_episode_steps=spec.max_steps)
        self._env = make_env(spec.task, kwargs)
        self.record = [False] * num_envs
        self._episodes = [Episode() for _ in range(num_envs)]
        self._seeds = [-1] * num_envs
        self._obs: dict[str, np.ndarray] = {}

    def set_attr(self, name: str, values: list[bool]) -> None:
        if name != "record":
            raise AttributeError(f"GpuChunkEnvs sets only 'record', not {name!r}")
        self.record = [bool(v) for v in values]

    def _observe(self, obs: dict) -> dict[str, np.ndarray]:
        envs = range(self.num_envs)
        self._obs = {"frame": np.stack([frame_of(obs, self.setup.cameras, i) for i in envs])}
        if self.setup.proprio_dim:
            self._obs["proprio"] = np.stack([proprio_of(obs, self.setup.proprio, i) for i in envs])
        return self._obs

    def _over(self) -> np.ndarray:
        return np.array([e.over(self.setup.max_steps) for e in self._episodes])

    def reset(self, *, seed: list[int], options: dict | None = None) -> tuple[dict, dict]:
        obs, _ = self._env.reset(seed=list(seed))
        self._seeds = list(seed)
        frames = self._observe(obs)["frame"]
        self._episodes = [Episode(frames=[frames[i]] if self.record[i] else []) for i in range(self.num_envs)]
        return self._obs, {}

    def step(self, actions: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, dict]:
        finite = np.isfinite(actions).reshape(self.num_envs, -1).all(axis=1)
        for i in np.flatnonzero(~self._over() & ~finite):
            self._episodes[i].failure = NON_FINITE
        live = ~self._over()
        chunk = np.where(live[:, None, None], np.nan_to_num(actions), 0.0).astype(np.float32)
        render_all = any(self.record[i] for i in np.flatnonzero(live))
        obs = None
        for k in range(chunk.shape[1]):
            if not live.any():
                break
            action = torch.from_numpy(chunk[:, k]).to(self._env.unwrapped.device)
            if render_all or k == chunk.shape[1] - 1:
                obs, _, _, _, info = self._env.step(action)
            else:
                info = step_unobserved(self._env, action)
            for i in np.flatnonzero(live):
                self._episodes[i].record_step(info, int(i))
                if self.record[i]:
                    self._episodes[i].frames.append(frame_of(obs, self.setup.cameras, int(i)))
            live &= ~self._over()
        if obs is not None:
            self._observe(obs)
        zeros = np.zeros(self.num_envs, bool)
        return self._obs, np.zeros(self.num_envs), zeros, zeros, {"over": self._over()}

    def call(self, name: str) -> tuple[dict[str, Any], ...]:
        if name != "row":
            raise AttributeError(f"GpuChunkEnvs answers only 'row', not {name!r}")
        return tuple(e.row(s) for e, s in zip(self._episodes, self._seeds, strict=True))

    def close(self) -> None:
        self._env.close()


def vector_env(spec: ChunkEnvSpec, num_envs: int, sim: str = "cpu") -> Any:
    """``num_envs`` evaluation envs. ``sim="cpu"``: ChunkEnvs in worker processes
    (spawned), or in this process for one; ``"gpu"``: one GPU simulation (GpuChunkEnvs)."""
    if sim == "gpu":
        return GpuChunkEnvs(spec, num_envs)
    make = functools.partial(ChunkEnv, spec)
    mode = gym.vector.AutoresetMode.DISABLED
    if num_envs == 1:
        return gym.vector.SyncVectorEnv([make], autoreset_mode=mode)
    return gym.vector.AsyncVectorEnv([make] * num_envs, context="spawn", autoreset_mode=mode)
