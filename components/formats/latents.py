"""Encode's output folder (``data/encoded``): written by :func:`write_encoded`, read back into
the model library's episodes.

vae/                   the AutoencoderKL (diffusers save_pretrained format)
latents/<task>.npz     latents (F, C, h, w) float32 normalised, actions (S, A),
                       proprio (F, D), frame_offsets / action_offsets (E + 1,),
                       seeds (E,), holdout (E,) bool
corpus.npz             the video corpus (components.formats.corpus), normalised the
                       same way: latents (F, C, h, w), frame_offsets (N + 1,), and
                       each clip's label, source and origin (N,) strings
stats.json             latent shape and channel mean/std, each task's manifest, and
                       the corpus's counts by source
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from components.errors import ComponentError
from components.formats.files import read_json, write_json
from components.formats.normalizers import Normalizer
from par.data import Episode

FORMAT = "par-latents-v2"
CORPUS = "corpus.npz"
Split = Literal["train", "holdout", "all"]


def write_encoded(
    tmp: Path, vae: Any, manifests: list[dict], demos: dict, raw: dict, holdout: dict, corpus: Corpus | None = None
) -> dict:
    """Write the folder's vae/, latents/<task>.npz, corpus.npz and stats.json; returns the stats.

    ``demos``: every task's episodes (components.formats.dataset.Demo); ``raw``: their
    un-normalised latents, one tensor an episode; ``holdout``: held-out episodes a task
    (the last ones), left out of the normalisation statistics; ``corpus``: the video
    corpus's clips and their un-normalised latents (normalised with the demos' statistics)."""
    train_latents = torch.cat([z for task, eps in raw.items() for z in eps[: len(eps) - holdout[task]]])
    mean = train_latents.mean(dim=(0, 2, 3))
    std = train_latents.std(dim=(0, 2, 3)).clamp_min(1e-6)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    (tmp / "latents").mkdir()
    for task, eps in demos.items():
        latents = torch.cat(raw[task])
        np.savez(
            tmp / "latents" / f"{task}.npz",
            latents=((latents - mean[:, None, None]) / std[:, None, None]).numpy().astype(np.float32),
            actions=np.concatenate([d.actions for d in eps]).astype(np.float32),
            proprio=np.concatenate([d.proprio for d in eps]).astype(np.float32),
            frame_offsets=np.cumsum([0] + [len(d.frames) for d in eps]),
            action_offsets=np.cumsum([0] + [len(d.actions) for d in eps]),
            seeds=np.asarray([d.seed for d in eps], dtype=np.int64),
            holdout=np.arange(len(eps)) >= len(eps) - holdout[task],
        )
    corpus = corpus or Corpus([], [])
    np.savez(
        tmp / CORPUS,
        latents=_normalised(corpus.latents, mean, std, train_latents.shape[1:]),
        frame_offsets=np.cumsum([0] + [len(z) for z in corpus.latents]),
        **{key: np.asarray([c[key] for c in corpus.clips], dtype=str) for key in ("label", "source", "origin")},
    )
    stats = {
        "format": FORMAT,
        "tasks": list(demos),
        "latent_shape": [int(n) for n in train_latents.shape[1:]],
        "latent_mean": mean.tolist(),
        "latent_std": std.tolist(),
        "frame_shape": list(manifests[0]["frame_shape"]),
        "holdout_episodes": holdout,
        "manifests": {m["task"]: {k: v for k, v in m.items() if k != "episodes"} for m in manifests},
        "corpus": corpus.counts(),
    }
    write_json(tmp / "stats.json", stats)
    return stats


@dataclass
class Corpus:
    """The video corpus's clips (their manifest entries) and latents, one tensor a clip."""

    clips: list[dict[str, Any]]
    latents: list[torch.Tensor]

    def counts(self) -> dict[str, Any]:
        sources: dict[str, dict[str, int]] = {}
        for clip, z in zip(self.clips, self.latents, strict=True):
            entry = sources.setdefault(clip["source"], {"clips": 0, "frames": 0})
            entry["clips"], entry["frames"] = entry["clips"] + 1, entry["frames"] + len(z)
        return {"clips": len(self.clips), "frames": sum(len(z) for z in self.latents), "sources": sources}


def _normalised(latents: list[torch.Tensor], mean: torch.Tensor, std: torch.Tensor, shape: Any) -> np.ndarray:
    if not latents:
        return np.zeros((0, *shape), np.float32)
    z = torch.cat(latents)
    return ((z - mean[:, None, None]) / std[:, None, None]).numpy().astype(np.float32)


@dataclass
class VideoClip:
    """A corpus clip as pretraining reads it."""

    label: str  # the task it shows, or the folder source's name
    source: str
    origin: str
    latents: torch.Tensor  # (T, C, h, w), normalised


def load_corpus(encoded: str | Path) -> list[VideoClip]:
    """The encoded video corpus (empty when encode had none, or predates it)."""
    path = Path(encoded) / CORPUS
    if not path.is_file():
        return []
    with np.load(path, allow_pickle=False) as data:
        offsets, latents = data["frame_offsets"], data["latents"]
        return [
            VideoClip(str(label), str(source), str(origin), torch.from_numpy(latents[offsets[i] : offsets[i + 1]]))
            for i, (label, source, origin) in enumerate(zip(data["label"], data["source"], data["origin"], strict=True))
        ]


def load_stats(encoded: str | Path) -> dict[str, Any]:
    """stats.json of an encoded folder."""
    return read_json(Path(encoded) / "stats.json", "latent statistics")


def load_task_arrays(encoded: str | Path, task: str) -> dict[str, np.ndarray]:
    path = Path(encoded) / "latents" / f"{task}.npz"
    if not path.is_file():
        raise ComponentError(f"no latents for task {task} at {path} (was it in encode's task list?)")
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def load_episodes(
    encoded: str | Path,
    tasks: list[str],
    actions: Normalizer,
    proprio: Normalizer,
    split: Split = "train",
) -> list[Episode]:
    """Episodes of ``tasks`` (task id = index in ``tasks``), normalised for the model."""
    episodes = []
    for task_id, task in enumerate(tasks):
        arrays = load_task_arrays(encoded, task)
        fo, ao = arrays["frame_offsets"], arrays["action_offsets"]
        for e, held_out in enumerate(arrays["holdout"]):
            if (split == "train" and held_out) or (split == "holdout" and not held_out):
                continue
            episodes.append(
                Episode(
                    task=task_id,
                    latents=torch.from_numpy(arrays["latents"][fo[e] : fo[e + 1]]),
                    actions=torch.from_numpy(np.clip(actions.encode(arrays["actions"][ao[e] : ao[e + 1]]), -1, 1)),
                    proprio=torch.from_numpy(proprio.encode(arrays["proprio"][fo[e] : fo[e + 1]])),
                )
            )
    if not episodes:
        raise ComponentError(f"no {split} episodes for tasks {tasks} in {encoded}")
    return episodes


def episode_seeds(encoded: str | Path, task: str, split: Split = "holdout") -> list[int]:
    arrays = load_task_arrays(encoded, task)
    keep = {"train": ~arrays["holdout"], "holdout": arrays["holdout"], "all": np.ones_like(arrays["holdout"])}[split]
    return [int(s) for s in arrays["seeds"][keep]]
