"""The policy bundle: everything needed to act in ManiSkill from camera frames.

A policy folder holds::

    model/         the PAR network (par.checkpoint format, config inside)
    vae/           the AutoencoderKL that made its latents (diffusers format)
    policy.json    tasks (id order), latent normalisation, action and proprio
                   normalisation, and each task's env kwargs / control mode / camera

Evaluation and scoring need nothing else, so a folder (or the MLflow artifact that
wraps it) is a deployable model.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import ComponentError
from components.formats.files import read_json, validation_problems, write_json
from components.formats.normalizers import Normalizer, normalizers_from_stats
from par.checkpoint import load_model, save_model
from par.model import PAR

FORMAT = "par-policy-v2"


class Policy:
    """A loaded policy bundle; ``sha256`` is its content hash (:func:`bundle_sha256`),
    which every evaluation of it records."""

    def __init__(self, model: PAR, vae: Any, info: dict[str, Any], sha256: str = "") -> None:
        self.model, self.vae, self.info, self.sha256 = model.eval(), vae.eval(), info, sha256
        self.tasks: list[str] = info["tasks"]
        self.actions = Normalizer.from_json(info["action_norm"])
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

    def denormalize_actions(self, actions: torch.Tensor) -> np.ndarray:
        return self.actions.decode(actions.cpu().numpy())


def save_policy(
    directory: Path, model: PAR, vae_dir: Path, stats: dict[str, Any], tasks: list[str], extra: dict | None = None
) -> None:
    """Write a policy bundle (``directory`` must be a fresh temporary folder)."""
    actions, proprio = normalizers_from_stats(stats, tasks)
    save_model(model, directory / "model")
    shutil.copytree(vae_dir, directory / "vae")
    info = {
        "format": FORMAT,
        "tasks": tasks,
        "latent_mean": stats["latent_mean"],
        "latent_std": stats["latent_std"],
        "latent_shape": stats["latent_shape"],
        "frame_shape": stats["frame_shape"],
        "action_norm": actions.to_json(),
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


class Normalization(BaseModel):
    offset: list[float] = Field(min_length=1)
    scale: list[float] = Field(min_length=1)


class TaskInfo(BaseModel):
    """What evaluation needs to rebuild a task's environment as the demos had it."""

    model_config = ConfigDict(extra="allow")

    control_mode: str
    camera: dict[str, Any]
    env_kwargs: dict[str, Any]


class PolicyInfo(BaseModel):
    """policy.json, checked when a bundle is loaded (extra fields, such as the training
    run's id, are kept)."""

    model_config = ConfigDict(extra="allow")

    format: Literal["par-policy-v2"]
    tasks: list[str] = Field(min_length=1)
    latent_mean: list[float] = Field(min_length=1)
    latent_std: list[float] = Field(min_length=1)
    latent_shape: list[int] = Field(min_length=3, max_length=3)
    frame_shape: list[int] = Field(min_length=3, max_length=3)
    action_norm: Normalization
    proprio_norm: Normalization
    task_info: dict[str, TaskInfo]

    @model_validator(mode="after")
    def _every_task_described(self) -> PolicyInfo:
        missing = [t for t in self.tasks if t not in self.task_info]
        if missing:
            raise ValueError(f"task_info lacks the tasks {missing}")
        return self


def read_policy_info(directory: Path) -> dict[str, Any]:
    """policy.json of a bundle, validated; the error names the file and the field."""
    path = directory / "policy.json"
    info = read_json(path, "policy description")
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise ComponentError(f"{path} is not a {FORMAT} policy (format {found!r})")
    try:
        PolicyInfo.model_validate(info)
    except ValidationError as exc:
        raise ComponentError(f"{path} is not a valid policy description: {validation_problems(exc)}") from exc
    return info


def bundle_sha256(directory: str | Path) -> str:
    """The content hash of a bundle: every file's path and bytes, in path order. The
    same bundle has the same hash wherever it lies (a run folder, an MLflow download)."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_policy(directory: str | Path) -> Policy:
    directory = Path(directory)
    if not directory.is_dir():
        raise ComponentError(f"policy folder {directory} does not exist")
    info = read_policy_info(directory)
    for part in ("model", "vae"):
        if not (directory / part).is_dir():
            raise ComponentError(f"policy folder {directory} lacks its {part}/ folder")
    from diffusers import AutoencoderKL

    try:
        model = load_model(directory / "model")
    except (ValueError, FileNotFoundError) as exc:
        raise ComponentError(f"policy folder {directory}: {exc}") from exc
    try:
        vae = AutoencoderKL.from_pretrained(directory / "vae")
    except Exception as exc:  # diffusers and safetensors raise several types for a broken folder
        raise ComponentError(f"policy folder {directory}: its vae/ does not load: {exc}") from exc
    return Policy(model, vae, info, bundle_sha256(directory))


@torch.no_grad()
def act_once(policy: Policy) -> None:
    """Every task once: an all-black frame of the bundle's frame shape (and zero
    proprio) in, one finite action chunk of the right shape out, or a ComponentError."""
    from par.sampling import rollout_for

    H, W, _ = policy.info["frame_shape"]
    config = policy.model.config
    for task in policy.tasks:
        try:
            rollout = rollout_for(policy.model, torch.tensor([policy.task_id(task)]), torch.Generator().manual_seed(0))
            proprio = np.zeros((1, len(policy.proprio.offset)), np.float32)
            rollout.observe(
                policy.encode_frames(np.zeros((1, H, W, 3), np.uint8)),
                policy.normalize_proprio(proprio) if config.proprio_dim else None,
            )
            actions = policy.denormalize_actions(rollout.sample_actions()[0])
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ComponentError(f"the policy cannot act on {task}: {exc}") from exc
        if actions.shape != (config.chunk_len, config.action_dim) or not np.isfinite(actions).all():
            raise ComponentError(
                f"the policy's first action chunk on {task} is {actions.shape}, finite: "
                f"{bool(np.isfinite(actions).all())}"
            )
