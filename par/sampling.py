"""Closed-loop generation with a KV-cache (or by full recomputation, for reference).

A :class:`Rollout` walks an episode one physical step at a time::

    rollout = Rollout(model, task=torch.tensor([0]), generator=torch.Generator().manual_seed(0))
    for each decision point:
        actions, predicted_next = rollout.step(real_latent, real_proprio)
        ... execute ``actions`` (L env steps), observe the real next frame ...

A batch of B independent episodes steps in lockstep (one batched call a decision,
the KV-cache's batch dimension): pass ``generator`` as a list of B generators, one an
episode, and each episode samples exactly what it would sample alone.

The frame passed to :meth:`Rollout.observe` is always the one that enters the
context: in closed loop the real observed frame takes the place of the predicted
one; for open-loop video prediction pass the prediction back instead.

The context holds at most ``config.window_steps`` steps. When a new step would not
fit, the window jumps forward and keeps the last ``window_steps // 2`` steps, which
are re-encoded from the stored history: with a causal model every shorter window is
a prefix case seen in training, and both paths below apply the same schedule, so
cached and recomputed generation agree exactly.
"""

from __future__ import annotations

import torch

from par.baseline import BCPolicy, BCRollout
from par.diffusion import Generators
from par.mask import Layout, attention_mask, step_layout, task_layout
from par.model import PAR
from par.tokenizers import check_shape
from par.transformer import KVCache

PREFIX_PARTS = ("frame", "state", "boa")


class Rollout:
    def __init__(
        self,
        model: PAR,
        task: torch.Tensor,
        generator: Generators = None,
        use_cache: bool = True,
        video: bool = False,
        action_steps: int | None = None,
        frame_steps: int | None = None,
        action_samples: int = 1,
    ) -> None:
        """``generator``: one for the batch, or one per episode (row of ``task``).
        ``video``: frame-only rollout (a video-pretrained model predicting frames).

        ``action_steps`` / ``frame_steps`` override the samplers' inference steps.
        ``action_samples`` > 1 draws that many chunks in one batched call and keeps
        the medoid (the draw closest to all the others): a mode-seeking choice that,
        unlike their mean, never blends two different ways of acting.
        """
        if action_samples < 1:
            raise ValueError(f"action_samples must be at least 1, got {action_samples}")
        self.model = model.eval()
        self.config = model.config
        self.task = task
        self.batch = int(task.shape[0])
        if not (generator is None or isinstance(generator, torch.Generator) or len(generator) == self.batch):
            raise ValueError(f"{len(generator)} generators for a batch of {self.batch} episodes")
        self.generator = generator
        self.use_cache = use_cache
        self.video = video
        self.action_steps, self.frame_steps = action_steps, frame_steps
        self.action_samples = action_samples
        self.history: list[dict[str, torch.Tensor | None]] = []
        self.window_start = 0
        self._reset_context()
        self._h_prefix: torch.Tensor | None = None
        self._h_last: torch.Tensor | None = None

    # ------------------------------------------------------------ context store
    def _reset_context(self) -> None:
        self._cache = KVCache()
        self._layout: Layout | None = None
        self._emb: torch.Tensor | None = None  # full-recompute path only

    @property
    def context_length(self) -> int:
        return 0 if self._layout is None else len(self._layout)

    def _feed(self, emb: torch.Tensor, layout: Layout) -> torch.Tensor:
        """Append tokens to the context; return their transformer outputs."""
        full = layout if self._layout is None else self._layout.cat(layout)
        if self.use_cache:
            mask = attention_mask(layout, full, no_ar=self.config.no_ar)
            h = self.model.transformer(emb, layout.position, mask, self._cache)
        else:
            self._emb = emb if self._emb is None else torch.cat([self._emb, emb], dim=1)
            mask = attention_mask(full, full, no_ar=self.config.no_ar)
            h = self.model.transformer(self._emb, full.position, mask)[:, -len(layout) :]
        self._layout = full
        return h

    def _truncate(self, length: int) -> None:
        self._cache.truncate(length)
        self._layout = self._layout.select(torch.arange(len(self._layout)) < length)
        if self._emb is not None:
            self._emb = self._emb[:, :length]

    def _step_tokens(self, entry: dict, slot: int, with_actions: bool) -> tuple[torch.Tensor, Layout]:
        m = self.model
        if self.video:
            return m.embed_frame(entry["frame"]), step_layout(self.config, slot, ("frame",))
        emb = torch.cat([m.embed_frame_group(entry["frame"], entry["proprio"]), m.embed_boa((self.batch,))], dim=1)
        layout = step_layout(self.config, slot, PREFIX_PARTS)
        if with_actions:
            emb = torch.cat([emb, m.embed_actions(entry["actions"])], dim=1)
            layout = layout.cat(step_layout(self.config, slot, ("action",)))
        return emb, layout

    def _start_window(self, start: int) -> None:
        """Re-encode history[start:] (complete steps) as a fresh window."""
        self._reset_context()
        self.window_start = start
        embs = [self.model.embed_task(self.task)]
        layout = task_layout(self.config)
        for slot, entry in enumerate(self.history[start:]):
            emb, lay = self._step_tokens(entry, slot, with_actions=not self.video)
            embs.append(emb)
            layout = layout.cat(lay)
        self._feed(torch.cat(embs, dim=1), layout)

    # -------------------------------------------------------------- public API
    @property
    def steps_taken(self) -> int:
        return len(self.history)

    @torch.no_grad()
    def observe(self, frame: torch.Tensor, proprio: torch.Tensor | None = None) -> None:
        """Start the next step with an observed (or predicted) frame latent (B, C, H, W)."""
        c = self.config
        check_shape("frame", frame, (self.batch, c.latent_channels, c.latent_height, c.latent_width))
        if c.proprio_dim and not self.video:
            if proprio is None:
                raise ValueError("proprio is required: the model was built with proprio_dim > 0")
            check_shape("proprio", proprio, (self.batch, c.proprio_dim))
        if self.history and not self.video and self.history[-1]["actions"] is None:
            raise RuntimeError("observe() called twice without commit_actions() in between")
        t = len(self.history)
        if t == 0:
            self._start_window(0)
        elif t - self.window_start >= c.window_steps:
            self._start_window(t - c.window_steps // 2)
        entry = {"frame": frame, "proprio": proprio, "actions": None}
        self.history.append(entry)
        emb, layout = self._step_tokens(entry, t - self.window_start, with_actions=False)
        self._h_prefix = self._feed(emb, layout)
        self._h_last = self._h_prefix[:, -1] if self.video else None

    @torch.no_grad()
    def sample_actions(self) -> torch.Tensor:
        """Sample the chunk of the current step: (B, L, A) in [-1, 1] (not yet committed)."""
        if self.video:
            raise RuntimeError("a video rollout has no actions")
        if self._h_prefix is None or self.history[-1]["actions"] is not None:
            raise RuntimeError("sample_actions() needs a frame: call observe() first")
        if not self.model.discrete:
            k = self.action_samples
            if k == 1:
                return self.model.sample_actions_diffusion(self._h_prefix, self.generator, self.action_steps)
            draws = self.model.sample_actions_diffusion(
                self._h_prefix.repeat_interleave(k, dim=0), self.generator, self.action_steps
            ).unflatten(0, (self.batch, k))  # (B, K, L, A)
            flat = draws.flatten(2)
            medoid = torch.cdist(flat, flat).sum(dim=-1).argmin(dim=-1)  # (B,)
            return draws[torch.arange(self.batch), medoid]
        # Discrete: decode a[0..L-1] one token at a time, then drop the scratch tokens.
        length = self.context_length
        slot = len(self.history) - 1 - self.window_start
        layout = step_layout(self.config, slot, ("action",))
        h, chosen = self._h_prefix[:, -1], []
        for j in range(self.config.chunk_len):
            chosen.append(self.model.action_bins(h))
            if j + 1 < self.config.chunk_len:
                emb = self.model.embed_actions(chosen[-1][:, None], start=j)
                h = self._feed(emb, layout.select(torch.arange(len(layout)) == j))[:, -1]
        self._truncate(length)
        return torch.stack(chosen, dim=1)

    @torch.no_grad()
    def commit_actions(self, actions: torch.Tensor) -> None:
        """Put the executed chunk (sampled or given) into the context."""
        c = self.config
        check_shape("actions", actions, (self.batch, c.chunk_len, c.action_dim))
        entry = self.history[-1] if self.history else None
        if entry is None or entry["actions"] is not None or self.video:
            raise RuntimeError("commit_actions() needs an observed step without actions")
        entry["actions"] = actions
        slot = len(self.history) - 1 - self.window_start
        h = self._feed(self.model.embed_actions(actions), step_layout(c, slot, ("action",)))
        self._h_last = h[:, -1]

    @torch.no_grad()
    def predict_frame(self) -> torch.Tensor:
        """Sample the next frame's latents (B, C, H, W) from the current step."""
        if self._h_last is None:
            raise RuntimeError("predict_frame() needs the step's actions: call commit_actions() first")
        h_frame = self._h_prefix[:, : self.config.frame_tokens]
        return self.model.sample_frame(h_frame, self._h_last, self.generator, self.frame_steps)

    @torch.no_grad()
    def step(
        self, frame: torch.Tensor, proprio: torch.Tensor | None = None, predict: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """observe -> sample actions -> commit them -> (optionally) predict the next frame."""
        self.observe(frame, proprio)
        actions = self.sample_actions()
        self.commit_actions(actions)
        return actions, self.predict_frame() if predict else None


def rollout_for(model: PAR | BCPolicy, task: torch.Tensor, generator: Generators = None, **kwargs):
    """The closed-loop driver of a model: a PAR Rollout, or the baseline's."""
    if isinstance(model, BCPolicy):
        return BCRollout(model, task, generator)
    return Rollout(model, task, generator, **kwargs)
