"""Context windows sampled from episodes held in memory.

The data pipeline stores latents once (NOVA's habit: encode once, sample windows at
train time). An episode of ``T`` actions has ``T + 1`` observations. A window of ``K``
physical steps starts at an env step ``s`` and takes frames at ``s, s + L, ...,
s + K L`` (the last one a target only) and the actions ``s + t L + j``. Indices past
the episode's end repeat its last frame, state and action: after the demo succeeds
the robot holds still, which is what a policy should learn to do there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from par.model import Batch


@dataclass
class Episode:
    task: int
    latents: torch.Tensor  # (T + 1, C, H, W), normalised
    actions: torch.Tensor  # (T, A), in [-1, 1]
    proprio: torch.Tensor | None = None  # (T + 1, proprio_dim), normalised

    def __post_init__(self) -> None:
        T = self.actions.shape[0]
        if T < 1:
            raise ValueError("an episode needs at least one action")
        if self.latents.shape[0] != T + 1:
            raise ValueError(f"episode has {T} actions but {self.latents.shape[0]} latents (expected {T + 1})")
        if self.proprio is not None and self.proprio.shape[0] != T + 1:
            raise ValueError(f"episode has {T} actions but {self.proprio.shape[0]} proprio rows (expected {T + 1})")

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


def window_indices(length: int, start: int, steps: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame indices (K + 1,) and action indices (K, L) of a window, clamped to the episode."""
    frames = start + chunk * torch.arange(steps + 1)
    actions = frames[:steps, None] + torch.arange(chunk)[None]
    return frames.clamp(max=length), actions.clamp(max=length - 1)


class WindowSampler:
    """Samples batches of windows uniformly over (episode, start step).

    With ``balance_tasks`` every task is equally likely first, then every env step of
    that task's episodes: a task with four times the demos (or twice the episode length)
    of another does not take four times the updates. ``groups`` (one id an episode) and
    ``group_weights`` generalise it: group g is drawn with probability proportional to
    its weight, then every env step within it equally likely (video pretraining's mix
    of sources). ``drawn`` counts the windows taken from each episode (kept in
    :meth:`state_dict`, so that a resumed run still knows what it was trained on).
    """

    def __init__(
        self,
        episodes: list[Episode],
        steps: int,
        chunk: int,
        video: bool = False,
        balance_tasks: bool = False,
        groups: list[int] | None = None,
        group_weights: list[float] | None = None,
    ) -> None:
        if not episodes:
            raise ValueError("no episodes to sample from")
        self.episodes, self.steps, self.chunk, self.video = episodes, steps, chunk, video
        lengths = torch.tensor([e.length for e in episodes], dtype=torch.float64)
        if balance_tasks and groups is None:
            groups = [e.task for e in episodes]
        if groups is not None:
            ids = torch.tensor(groups)
            if len(ids) != len(episodes):
                raise ValueError(f"{len(ids)} group ids for {len(episodes)} episodes")
            weights = torch.ones(int(ids.max()) + 1, dtype=torch.float64)
            if group_weights is not None:
                weights = torch.tensor(group_weights, dtype=torch.float64)
            per_group = torch.zeros(len(weights), dtype=torch.float64).index_add_(0, ids, lengths)
            lengths = lengths / per_group[ids] * weights[ids]  # each group's episodes sum to its weight
        self.weights = lengths / lengths.sum()  # every env step (of a group) equally likely as a start
        self.drawn = torch.zeros(len(episodes), dtype=torch.long)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"drawn": self.drawn.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.drawn = state["drawn"].clone()

    def window(self, episode: int, start: int) -> Batch:
        ep = self.episodes[episode]
        fi, ai = window_indices(ep.length, start, self.steps, self.chunk)
        return Batch(
            task=torch.tensor([ep.task]),
            frames=ep.latents[fi][None],
            proprio=None if ep.proprio is None or self.video else ep.proprio[fi][None],
            actions=None if self.video else ep.actions[ai][None],
        )

    def sample(self, batch_size: int, generator: torch.Generator | None = None, rows: slice | None = None) -> Batch:
        """A batch of ``batch_size`` windows, or only its ``rows`` (one process's share of a
        global batch): every window of the batch is drawn from ``generator`` either way,
        so the processes' rows together are exactly the batch one process would draw, and
        ``drawn`` counts the whole batch."""
        picks = torch.multinomial(self.weights, batch_size, replacement=True, generator=generator)
        self.drawn += torch.bincount(picks, minlength=len(self.episodes))
        keep = range(batch_size)[rows if rows is not None else slice(None)]
        windows = []
        for row, i in enumerate(picks.tolist()):
            start = int(torch.randint(0, self.episodes[i].length, (1,), generator=generator))
            if row in keep:
                windows.append(self.window(i, start))
        if not windows:
            raise ValueError(f"rows {rows} of a batch of {batch_size} hold no window")
        return collate(windows)


def collate(windows: list[Batch]) -> Batch:
    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(w, name) for w in windows]
        return None if values[0] is None else torch.cat(values)

    return Batch(task=cat("task"), frames=cat("frames"), proprio=cat("proprio"), actions=cat("actions"))
