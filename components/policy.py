"""The policy bundle: everything needed to act in ManiSkill from camera frames.

A policy folder holds::

    model/         the PAR network (par.checkpoint format, config inside)
    vae/           the AutoencoderKL that made its latents (diffusers format)
    policy.json    tasks (id order), latent normalisation, action and proprio
                   normalisation, the action frame (absolute joint targets, or
                   offsets from the measured joints), and each task's env kwargs /
                   control mode / camera

Evaluation and scoring need nothing else, so a folder (or the MLflow artifact that
wraps it) is a deployable model.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common import ComponentError, read_json, write_json
from par.checkpoint import load_model, save_model
from par.model import PAR

FORMAT = "par-policy-v2"


@dataclass
class Normalizer:
    """Affine map of a vector to a normalised range, and back."""

    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def min_max(cls, low: list[float], high: list[float], floor: float = 1e-3) -> Normalizer:
        """[low, high] -> [-1, 1]; a constant dimension maps to 0."""
        low_a, high_a = np.asarray(low, np.float32), np.asarray(high, np.float32)
        return cls(offset=(low_a + high_a) / 2, scale=np.maximum((high_a - low_a) / 2, floor))

    @classmethod
    def standard(cls, mean: list[float], std: list[float], floor: float = 1e-3) -> Normalizer:
        return cls(offset=np.asarray(mean, np.float32), scale=np.maximum(np.asarray(std, np.float32), floor))

    def encode(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.offset) / self.scale).astype(np.float32)

    def decode(self, y: np.ndarray) -> np.ndarray:
        return (y * self.scale + self.offset).astype(np.float32)

    def to_json(self) -> dict[str, list[float]]:
        return {"offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, list[float]]) -> Normalizer:
        return cls(np.asarray(data["offset"], np.float32), np.asarray(data["scale"], np.float32))


@dataclass
class ActionCodec:
    """Raw env actions <-> the model's chunks in [-1, 1].

    ``reference_index`` (the relative action frame): for each action dimension, the
    column of the raw proprio vector it is measured from, or None. Such a dimension is
    learned as the action minus that proprio value observed at the chunk's first frame
    (a joint target as an offset from the joint's measured position); the others, and
    every dimension when ``reference_index`` is None, are learned as they are. ``norm``
    min-max normalises what is learned.
    """

    norm: Normalizer
    reference_index: list[int | None] | None = None

    @property
    def relative(self) -> bool:
        return self.reference_index is not None

    def reference(self, proprio: np.ndarray | None) -> np.ndarray:
        """Raw proprio (..., P) -> the per-dimension reference (..., A); zeros where none."""
        if self.reference_index is None:
            return np.zeros(len(self.norm.offset), np.float32)
        if proprio is None:
            raise ComponentError("this policy learns actions relative to the measured joints: it needs the proprio")
        proprio = np.asarray(proprio, np.float32)
        ref = np.zeros((*proprio.shape[:-1], len(self.reference_index)), np.float32)
        for d, column in enumerate(self.reference_index):
            if column is not None:
                ref[..., d] = proprio[..., column]
        return ref

    def encode(self, actions: np.ndarray, proprio: np.ndarray | None = None) -> np.ndarray:
        """A raw chunk (L, A) and the raw proprio (P,) at its first frame -> [-1, 1]."""
        return np.clip(self.norm.encode(actions - self.reference(proprio)), -1, 1)

    def decode(self, chunk: np.ndarray, proprio: np.ndarray | None = None) -> np.ndarray:
        """Inverse of :meth:`encode`: the raw actions to execute."""
        return self.norm.decode(chunk) + self.reference(proprio)

    def episode_arrays(self, actions: np.ndarray, proprio: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """An episode's raw actions (T, A) and proprio (T + 1, P) as par.data.Episode's
        ``actions`` and ``reference``: chunk = actions[i] - reference[first frame]."""
        if not self.relative:
            return np.clip(self.norm.encode(actions), -1, 1), None
        scale = self.norm.scale
        return ((actions - self.norm.offset) / scale).astype(np.float32), (self.reference(proprio) / scale).astype(
            np.float32
        )

    def to_json(self) -> dict[str, Any]:
        return {"action_norm": self.norm.to_json(), "action_reference": self.reference_index}

    @classmethod
    def from_json(cls, info: dict[str, Any]) -> ActionCodec:
        return cls(Normalizer.from_json(info["action_norm"]), info.get("action_reference"))


def relative_reference_index(manifests: list[dict[str, Any]]) -> list[int | None]:
    """The relative frame's reference columns: arm joint i -> qpos column i, gripper none.

    Only for joint-position targets (``pd_joint_pos``: the arm's joints, then the
    gripper) and a proprio vector that starts with qpos."""
    for m in manifests:
        if m["control_mode"] != "pd_joint_pos":
            raise ComponentError(
                f"model.action_frame relative needs joint-position targets (collect.control_mode pd_joint_pos); "
                f"{m['task']} was collected with {m['control_mode']!r}"
            )
        parts = m.get("proprio", ["qpos"])
        if not parts or parts[0] != "qpos":
            raise ComponentError(
                f"model.action_frame relative reads the measured joints from the proprio, which must start with "
                f"qpos; {m['task']} has collect.proprio {parts}"
            )
    arm = manifests[0]["action_dim"] - 1
    return [*range(arm), None]


def relative_action_range(
    actions: np.ndarray, proprio: np.ndarray, chunk_len: int, index: list[int | None]
) -> tuple[np.ndarray, np.ndarray]:
    """Min and max over an episode of every chunk's actions relative to its first frame
    (chunks start at every step; past the end the last action repeats, as in training)."""
    T = len(actions)
    codec = ActionCodec(Normalizer(np.zeros(len(index), np.float32), np.ones(len(index), np.float32)), index)
    ref = codec.reference(proprio[:T])  # (T, A): a chunk can start at any of the T steps
    low, high = np.full(len(index), np.inf, np.float32), np.full(len(index), -np.inf, np.float32)
    for j in range(chunk_len):
        offsets = actions[np.minimum(np.arange(T) + j, T - 1)] - ref
        low, high = np.minimum(low, offsets.min(0)), np.maximum(high, offsets.max(0))
    return low, high


def normalizers_from_stats(stats: dict[str, Any], tasks: list[str]) -> tuple[Normalizer, Normalizer]:
    """Action min-max and proprio mean/std normalisers over the given tasks' manifests."""
    manifests = [stats["manifests"][t] for t in tasks]
    low = np.min([m["action_min"] for m in manifests], axis=0)
    high = np.max([m["action_max"] for m in manifests], axis=0)
    # Pool proprio statistics (weighted by steps) across tasks.
    weights = np.asarray([m["counts"]["steps"] for m in manifests], np.float64)
    means = np.asarray([m["proprio_mean"] for m in manifests])
    stds = np.asarray([m["proprio_std"] for m in manifests])
    mean = (weights[:, None] * means).sum(0) / weights.sum()
    var = (weights[:, None] * (stds**2 + (means - mean) ** 2)).sum(0) / weights.sum()
    return Normalizer.min_max(low.tolist(), high.tolist()), Normalizer.standard(mean.tolist(), np.sqrt(var).tolist())


class Policy:
    """A loaded policy bundle."""

    def __init__(self, model: PAR, vae: Any, info: dict[str, Any]) -> None:
        self.model, self.vae, self.info = model.eval(), vae.eval(), info
        self.tasks: list[str] = info["tasks"]
        self.actions = ActionCodec.from_json(info)
        self.proprio = Normalizer.from_json(info["proprio_norm"])
        self.latent_mean = torch.tensor(info["latent_mean"])[:, None, None]
        self.latent_std = torch.tensor(info["latent_std"])[:, None, None]

    def task_id(self, task: str) -> int:
        if task not in self.tasks:
            raise ComponentError(f"the policy was not trained on task {task!r}; it knows {self.tasks}")
        return self.tasks.index(task)

    def task_info(self, task: str) -> dict[str, Any]:
        self.task_id(task)
        return self.info["task_info"][task]

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised latents (N, C, h, w)."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
        z = self.vae.encode(x).latent_dist.mean
        return (z - self.latent_mean) / self.latent_std

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (N, C, h, w) -> images (N, 3, H, W) in [0, 1]."""
        z = latents * self.latent_std + self.latent_mean
        return ((self.vae.decode(z).sample + 1) / 2).clamp(0, 1)

    def normalize_proprio(self, proprio: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.proprio.encode(proprio))

    def denormalize_actions(self, actions: torch.Tensor, proprio: np.ndarray | None = None) -> np.ndarray:
        """The model's chunk (L, A) -> raw actions; ``proprio``: the raw proprio vector
        observed at the chunk's first frame (needed by a relative action frame)."""
        return self.actions.decode(actions.cpu().numpy(), proprio)

    def normalize_actions(self, actions: np.ndarray, proprio: np.ndarray | None = None) -> torch.Tensor:
        """Inverse of :meth:`denormalize_actions`, clipped to [-1, 1]."""
        return torch.from_numpy(self.actions.encode(actions, proprio))


def save_policy(
    directory: Path,
    model: PAR,
    vae_dir: Path,
    stats: dict[str, Any],
    tasks: list[str],
    extra: dict | None = None,
    actions: ActionCodec | None = None,
) -> None:
    """Write a policy bundle (``directory`` must be a fresh temporary folder).
    ``actions``: the codec the model was trained with (default: absolute, from stats)."""
    absolute, proprio = normalizers_from_stats(stats, tasks)
    actions = actions or ActionCodec(absolute)
    save_model(model, directory / "model")
    shutil.copytree(vae_dir, directory / "vae")
    info = {
        "format": FORMAT,
        "tasks": tasks,
        "latent_mean": stats["latent_mean"],
        "latent_std": stats["latent_std"],
        "latent_shape": stats["latent_shape"],
        "frame_shape": stats["frame_shape"],
        **actions.to_json(),
        "proprio_norm": proprio.to_json(),
        "task_info": {
            t: {
                k: stats["manifests"][t][k]
                for k in ("control_mode", "camera", "env_kwargs", "robot_uids", "counts", "proprio")
                if k in stats["manifests"][t]  # "proprio": absent from older manifests
            }
            for t in tasks
        },
        **(extra or {}),
    }
    write_json(directory / "policy.json", info)


def load_policy(directory: str | Path) -> Policy:
    directory = Path(directory)
    if not directory.is_dir():
        raise ComponentError(f"policy folder {directory} does not exist")
    info = read_json(directory / "policy.json", "policy description")
    if info.get("format") != FORMAT:
        raise ComponentError(f"{directory / 'policy.json'} is not a {FORMAT} policy (format {info.get('format')!r})")
    for part in ("model", "vae"):
        if not (directory / part).is_dir():
            raise ComponentError(f"policy folder {directory} lacks its {part}/ folder")
    from diffusers import AutoencoderKL

    try:
        model = load_model(directory / "model")
    except (ValueError, FileNotFoundError) as exc:
        raise ComponentError(f"policy folder {directory}: {exc}") from exc
    vae = AutoencoderKL.from_pretrained(directory / "vae")
    return Policy(model, vae, info)
