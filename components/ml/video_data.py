"""What video pretraining trains on: frame-only episodes from ``pretrain.mix``'s sources.

``demos`` is the training frames of the run's own demonstrations; any other name is a
source of the video corpus (components.videos, encoded beside the demos). Each source
is drawn with probability weight / total, then every frame of it equally likely
(par.data.WindowSampler's groups). A clip is conditioned on its label: a trained task
keeps its task id (0, 1, ... in ``tasks`` order), every other label (another ManiSkill
task, a folder of the user's videos) gets an id after them, so the pretrained model has
more task rows than the policy; ``load_pretrained`` takes the policy's leading rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.errors import ComponentError
from components.formats.latents import episode_seeds, load_corpus, load_episodes
from components.formats.normalizers import Normalizer
from components.formats.params import DEMOS
from par.data import Episode


@dataclass
class VideoData:
    """Episodes of every source with a weight above 0, and where each came from."""

    labels: list[str]  # task id i conditions on labels[i]; the run's tasks come first
    sources: list[str]  # group id g is sources[g]
    weights: list[float]
    episodes: list[Episode] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    origins: list[dict[str, str]] = field(default_factory=list)  # source, label, origin

    def add(self, episode: Episode, source: str, label: str, origin: str) -> None:
        self.episodes.append(episode)
        self.groups.append(self.sources.index(source))
        self.origins.append({"source": source, "label": label, "origin": origin})

    def summary(self) -> dict[str, Any]:
        """Per source: weight, episodes and frames (part of the checkpoints' fingerprint)."""
        out = {s: {"weight": w, "episodes": 0, "frames": 0} for s, w in zip(self.sources, self.weights, strict=True)}
        for episode, group in zip(self.episodes, self.groups, strict=True):
            entry = out[self.sources[group]]
            entry["episodes"] += 1
            entry["frames"] += len(episode.latents)
        return out

    def record(self, drawn: torch.Tensor) -> dict[str, Any]:
        """sources.json: the mix, and every episode or clip with the windows drawn from it."""
        summary = self.summary()
        for group, count in zip(self.groups, drawn.tolist(), strict=True):
            entry = summary[self.sources[group]]
            entry["windows"] = entry.get("windows", 0) + count
        clips = [
            o | {"frames": len(e.latents), "windows": n}
            for o, e, n in zip(self.origins, self.episodes, drawn.tolist(), strict=True)
        ]
        return {"labels": self.labels, "sources": summary, "clips": clips}


def video_data(encoded: Path, tasks: list[str], mix: dict[str, float]) -> VideoData:
    """Every frame-only episode ``mix`` asks for, from ``encoded`` (encode's folder)."""
    weighted = {name: weight for name, weight in mix.items() if weight > 0}
    corpus = [c for c in load_corpus(encoded) if c.source in weighted]
    others = sorted({c.label for c in corpus} - set(tasks))
    data = VideoData(labels=list(tasks) + others, sources=list(weighted), weights=list(weighted.values()))
    if DEMOS in weighted:
        identity = Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
        seeds = {task: iter(episode_seeds(encoded, task, "train")) for task in tasks}
        for episode in load_episodes(encoded, tasks, identity, identity, "train"):
            task = tasks[episode.task]
            data.add(episode, DEMOS, task, f"demo seed {next(seeds[task])}")
    for clip in corpus:
        if len(clip.latents) < 2:
            continue  # a single frame predicts nothing
        task = data.labels.index(clip.label)
        episode = Episode(task=task, latents=clip.latents, actions=torch.zeros(len(clip.latents) - 1, 1))
        data.add(episode, clip.source, clip.label, clip.origin)
    empty = [s for s in weighted if s not in {data.sources[g] for g in data.groups}]
    if empty:
        raise ComponentError(
            f"pretrain.mix gives weight to {empty}, but the encoded data {encoded} has no frames of "
            f"{'it' if len(empty) == 1 else 'them'} (run the videos stage with that source, then encode)"
        )
    return data
