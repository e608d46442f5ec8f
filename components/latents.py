"""Reading encode's output into the model library's in-memory episodes."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from components.common import ComponentError
from components.policy import Normalizer
from par.data import Episode

Split = Literal["train", "holdout", "all"]


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
