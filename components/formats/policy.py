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

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.errors import ComponentError
from components.formats.files import read_json, write_json
from components.formats.normalizers import Normalizer, normalizers_from_stats
from par.checkpoint import load_model, save_model
from par.model import PAR

FORMAT = "par-policy-v2"


class Policy:
    """A loaded policy bundle."""

    def __init__(self, model: PAR, vae: Any, info: dict[str, Any]) -> None:
        self.model, self.vae, self.info = model.eval(), vae.eval(), info
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
