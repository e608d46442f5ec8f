"""The Physical Autoregressive Model.

One physical step ``t`` is the frame ``o_t`` (latent patch tokens, plus a state token
when proprioception is used), a begin-of-action token and the action chunk ``a_t``
executed from ``o_t``. From the transformer's outputs of step ``t``:

* the action de-tokenizer denoises ``a_t``, cross-attending to the outputs of the
  frame group and the BOA token of step ``t`` (which, by the mask, see the frame of
  their own step and all earlier steps, never ``a_t`` itself);
* the frame de-tokenizer denoises every token ``i`` of ``o_{t+1}`` from the output at
  frame token ``i`` of step ``t`` plus the output of the step's last token (which has
  seen ``a_t``): an action-conditioned prediction of the next frame.

Training is teacher-forced: one forward pass over a window of ``K`` steps gives the
loss of every step. Video pretraining runs the same network on frame-only windows
(``Batch.actions is None``), where only the frame loss exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from par.config import ModelConfig
from par.diffusion import Diffusion, Generators
from par.heads import ActionDiTHead, DiscreteActionHead, FrameDiTHead
from par.mask import ACTION, BOA, FRAME, STATE, TASK, attention_mask, window_layout
from par.tokenizers import (
    ActionTokenizer,
    FrameTokenizer,
    check_shape,
    discretize,
    patchify,
    undiscretize,
    unpatchify,
)
from par.transformer import Transformer

# Parameters that video pretraining trains; everything else is new in the physical model.
VIDEO_PREFIXES = (
    "task_embed",
    "kind_embed",
    "frame_tokenizer.",
    "transformer.",
    "frame_cond_token.",
    "frame_cond_step.",
    "frame_head.",
)


@dataclass
class Batch:
    """A batch of context windows of ``K`` steps.

    task:    (B,) long task ids
    frames:  (B, K + 1, C, H, W) normalised latents; frame K is a target only
    proprio: (B, K + 1, proprio_dim) or None when the model has no state token
    actions: (B, K, L, A) actions in [-1, 1], or None for a frame-only (video) batch
    """

    task: torch.Tensor
    frames: torch.Tensor
    proprio: torch.Tensor | None = None
    actions: torch.Tensor | None = None

    @property
    def video(self) -> bool:
        return self.actions is None

    @property
    def steps(self) -> int:
        return self.frames.shape[1] - 1

    def to(self, device: torch.device | str) -> Batch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(move(self.task), move(self.frames), move(self.proprio), move(self.actions))

    def slice_steps(self, steps: int) -> Batch:
        """The first ``steps`` steps (with their target frame)."""
        return Batch(
            task=self.task,
            frames=self.frames[:, : steps + 1],
            proprio=None if self.proprio is None else self.proprio[:, : steps + 1],
            actions=None if self.actions is None else self.actions[:, :steps],
        )


@dataclass
class NoiseDraw:
    """Training noise and timesteps, drawn up front so that losses are reproducible.

    frame_noise (B, K, k, N, token_dim), frame_t (B, K, k, N),
    action_noise (B, K, k, L, A), action_t (B, K, k); k = timesteps per token.
    """

    frame_noise: torch.Tensor
    frame_t: torch.Tensor
    action_noise: torch.Tensor | None = None
    action_t: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> NoiseDraw:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return NoiseDraw(move(self.frame_noise), move(self.frame_t), move(self.action_noise), move(self.action_t))

    def rows(self, rows: slice) -> NoiseDraw:
        """The draw of some rows of the batch (one process's share of a global batch)."""
        cut = lambda t: None if t is None else t[rows]  # noqa: E731
        return NoiseDraw(cut(self.frame_noise), cut(self.frame_t), cut(self.action_noise), cut(self.action_t))

    def slice_steps(self, start: int, stop: int) -> NoiseDraw:
        cut = slice(start, stop)
        return NoiseDraw(
            self.frame_noise[:, cut],
            self.frame_t[:, cut],
            None if self.action_noise is None else self.action_noise[:, cut],
            None if self.action_t is None else self.action_t[:, cut],
        )


@dataclass
class LossOutput:
    total: torch.Tensor  # scalar: weighted mean over steps
    frame: torch.Tensor  # scalar
    action: torch.Tensor  # scalar (0 in video mode)
    per_step: torch.Tensor  # (K,) weighted loss of every step


class PAR(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.task_embed = nn.Parameter(torch.randn(config.num_tasks, config.task_tokens, d) * 0.02)
        self.kind_embed = nn.Parameter(torch.randn(5, d) * 0.02)  # TASK..ACTION
        self.frame_tokenizer = FrameTokenizer(config)
        self.state_tokenizer = nn.Linear(config.proprio_dim, d) if config.proprio_dim else None
        self.boa = nn.Parameter(torch.randn(d) * 0.02)
        self.action_tokenizer = ActionTokenizer(config)
        self.transformer = Transformer(config)
        self.frame_cond_token = nn.Linear(d, d)
        self.frame_cond_step = nn.Linear(d, d)
        self.frame_head = FrameDiTHead(config.frame_head, config.token_dim, d)
        if config.action_head.kind == "diffusion":
            self.action_head: nn.Module = ActionDiTHead(config.action_head, config.action_dim, config.chunk_len, d)
        else:
            self.action_head = DiscreteActionHead(config.action_dim, config.action_head.num_bins, d)
        self.frame_diffusion = Diffusion(config.frame_head.diffusion)
        self.action_diffusion = Diffusion(config.action_head.diffusion)
        for module in (
            self.transformer,
            self.frame_tokenizer,
            self.state_tokenizer,
            self.action_tokenizer,
            self.frame_cond_token,
            self.frame_cond_step,
        ):
            if module is not None:
                module.apply(_init_linear)

    # ---------------------------------------------------------------- embeddings
    @property
    def discrete(self) -> bool:
        return self.config.action_head.kind == "discrete"

    @property
    def prefix_tokens(self) -> int:
        """Frame group + BOA tokens of a step."""
        return self.config.frame_tokens + self.config.state_tokens + 1

    def embed_task(self, task: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, task_tokens, d)."""
        if task.dtype != torch.long or task.dim() != 1:
            raise ValueError(f"task must be a 1-D long tensor of task ids, got {task.dtype} {tuple(task.shape)}")
        if task.numel() and (task.min() < 0 or task.max() >= self.config.num_tasks):
            raise ValueError(f"task ids must lie in [0, {self.config.num_tasks}), got {task.tolist()}")
        return self.task_embed[task] + self.kind_embed[TASK]

    def embed_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) -> (..., N, d): frame tokens alone (video mode)."""
        return self.frame_tokenizer(frame) + self.kind_embed[FRAME]

    def embed_frame_group(self, frame: torch.Tensor, proprio: torch.Tensor | None) -> torch.Tensor:
        """(..., C, H, W), (..., proprio_dim) -> (..., N + S, d): frame and state tokens."""
        tokens = self.embed_frame(frame)
        if self.state_tokenizer is None:
            return tokens
        if proprio is None:
            raise ValueError("proprio is required: the model was built with proprio_dim > 0")
        state = self.state_tokenizer(proprio)[..., None, :] + self.kind_embed[STATE]
        return torch.cat([tokens, state], dim=-2)

    def embed_boa(self, lead: tuple[int, ...]) -> torch.Tensor:
        return (self.boa + self.kind_embed[BOA]).expand(*lead, 1, -1)

    def embed_actions(self, actions: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(..., n, A) -> (..., n, d). Discrete models see bin centres, as at inference."""
        if self.discrete:
            bins = self.config.action_head.num_bins
            actions = undiscretize(discretize(actions, bins), bins)
        return self.action_tokenizer(actions, start) + self.kind_embed[ACTION]

    def check_batch(self, batch: Batch) -> None:
        c = self.config
        B = batch.task.shape[0]
        check_shape("frames", batch.frames, (B, None, c.latent_channels, c.latent_height, c.latent_width))
        K = batch.steps
        if K < 1:
            raise ValueError(f"frames must hold at least 2 frames (1 step + its target), got {K + 1}")
        if c.proprio_dim and not batch.video:
            if batch.proprio is None:
                raise ValueError("proprio is required: the model was built with proprio_dim > 0")
            check_shape("proprio", batch.proprio, (B, K + 1, c.proprio_dim))
        if batch.actions is not None:
            check_shape("actions", batch.actions, (B, K, c.chunk_len, c.action_dim))

    # ------------------------------------------------------------------ forward
    def hidden(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced transformer outputs: (B, K, P, d), P = step tokens (N in video)."""
        self.check_batch(batch)
        c = self.config
        B, K = batch.task.shape[0], batch.steps
        frames = batch.frames[:, :K]
        proprio = None if batch.proprio is None else batch.proprio[:, :K]
        if batch.video:
            steps = self.embed_frame(frames)  # (B, K, N, d)
        else:
            steps = torch.cat(
                [
                    self.embed_frame_group(frames, proprio),  # (B, K, N + S, d)
                    self.embed_boa((B, K)),  # (B, K, 1, d)
                    self.embed_actions(batch.actions),  # (B, K, L, d)
                ],
                dim=2,
            )
        P = steps.shape[2]
        x = torch.cat([self.embed_task(batch.task), steps.reshape(B, K * P, -1)], dim=1)
        layout = window_layout(c, K, video=batch.video)
        mask = attention_mask(layout, layout, no_ar=c.no_ar)
        h = self.transformer(x, layout.position, mask)
        return h[:, c.task_tokens :].reshape(B, K, P, -1)

    def frame_condition(self, h_frame: torch.Tensor, h_last: torch.Tensor) -> torch.Tensor:
        """Condition of next-frame token i: (..., N, d), (..., d) -> (..., N, d)."""
        return self.frame_cond_token(h_frame) + self.frame_cond_step(h_last)[..., None, :]

    def draw_noise(
        self, batch: Batch, generator: torch.Generator | None = None, batch_size: int | None = None
    ) -> NoiseDraw:
        """Noise and timesteps for ``batch``, or for ``batch_size`` rows shaped like it (a
        global batch, of which ``batch`` is one process's rows: see :meth:`NoiseDraw.rows`)."""
        c = self.config
        B, K = batch_size or batch.task.shape[0], batch.steps
        kf = c.frame_head.diffusion.timesteps_per_token
        draw = NoiseDraw(
            frame_noise=torch.randn(B, K, kf, c.frame_tokens, c.token_dim, generator=generator),
            frame_t=torch.randint(
                0, self.frame_diffusion.num_train_timesteps, (B, K, kf, c.frame_tokens), generator=generator
            ),
        )
        if not batch.video and not self.discrete:
            ka = c.action_head.diffusion.timesteps_per_token
            draw.action_noise = torch.randn(B, K, ka, c.chunk_len, c.action_dim, generator=generator)
            draw.action_t = torch.randint(0, self.action_diffusion.num_train_timesteps, (B, K, ka), generator=generator)
        return draw

    def loss(
        self,
        batch: Batch,
        noise: NoiseDraw | None = None,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        """Loss of every step of the batch, from one forward pass."""
        h = self.hidden(batch)
        if noise is None:
            noise = self.draw_noise(batch, generator)
        c = self.config
        frame_per_step = self._frame_loss(h, batch, noise)
        if batch.video:
            action_per_step = torch.zeros_like(frame_per_step)
        elif self.discrete:
            action_per_step = self._discrete_action_loss(h, batch)
        else:
            action_per_step = self._diffusion_action_loss(h, batch, noise)
        per_step = c.frame_loss_weight * frame_per_step + c.action_loss_weight * action_per_step
        return LossOutput(
            total=per_step.mean(),
            frame=frame_per_step.mean(),
            action=action_per_step.mean(),
            per_step=per_step,
        )

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> LossOutput:
        return self.loss(batch, generator=generator)

    def _frame_loss(self, h: torch.Tensor, batch: Batch, noise: NoiseDraw) -> torch.Tensor:
        c = self.config
        B, K, N, k = h.shape[0], h.shape[1], c.frame_tokens, noise.frame_t.shape[2]
        cond = self.frame_condition(h[:, :, :N], h[:, :, -1])  # (B, K, N, d)
        target = patchify(batch.frames[:, 1:], c.patch_size)  # (B, K, N, Dt)
        x0 = target[:, :, None].expand(B, K, k, N, c.token_dim).reshape(-1, c.token_dim)
        eps = noise.frame_noise.reshape(-1, c.token_dim)
        t = noise.frame_t.reshape(-1)
        x_t = self.frame_diffusion.add_noise(x0, eps, t)
        cond = cond[:, :, None].expand(B, K, k, N, c.d_model).reshape(-1, c.d_model)
        pred = self.frame_head(x_t, t, cond)
        err = (pred - eps).pow(2).reshape(B, K, k, N, c.token_dim)
        return err.mean(dim=(0, 2, 3, 4))

    def action_context(self, h_prefix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention context (frame group + BOA outputs) and the pooled BOA output."""
        return h_prefix, h_prefix[..., -1, :]

    def _diffusion_action_loss(self, h: torch.Tensor, batch: Batch, noise: NoiseDraw) -> torch.Tensor:
        c = self.config
        B, K, k = h.shape[0], h.shape[1], noise.action_t.shape[2]
        L, A, S = c.chunk_len, c.action_dim, self.prefix_tokens
        context, pooled = self.action_context(h[:, :, :S])  # (B, K, S, d), (B, K, d)
        context = context[:, :, None].expand(B, K, k, S, c.d_model).reshape(-1, S, c.d_model)
        pooled = pooled[:, :, None].expand(B, K, k, c.d_model).reshape(-1, c.d_model)
        x0 = batch.actions[:, :, None].expand(B, K, k, L, A).reshape(-1, L, A)
        eps = noise.action_noise.reshape(-1, L, A)
        t = noise.action_t.reshape(-1)
        x_t = self.action_diffusion.add_noise(x0, eps, t)
        pred = self.action_head(x_t, t, context, pooled)
        err = (pred - eps).pow(2).reshape(B, K, k, L, A)
        return err.mean(dim=(0, 2, 3, 4))

    def _discrete_action_loss(self, h: torch.Tensor, batch: Batch) -> torch.Tensor:
        c = self.config
        S, L = self.prefix_tokens, c.chunk_len
        # Output at BOA predicts a[0]; output at a[j - 1] predicts a[j].
        logits = self.action_head(h[:, :, S - 1 : S - 1 + L])  # (B, K, L, A, bins)
        target = discretize(batch.actions, c.action_head.num_bins)  # (B, K, L, A)
        ce = F.cross_entropy(logits.flatten(0, 3), target.flatten(), reduction="none")
        return ce.reshape(target.shape).mean(dim=(0, 2, 3))

    # ----------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_actions_diffusion(
        self, h_prefix: torch.Tensor, generator: Generators, steps: int | None = None
    ) -> torch.Tensor:
        """(B, S, d) outputs of a step's frame group + BOA -> (B, L, A) in [-1, 1]."""
        c = self.config
        timesteps = self.action_diffusion.timesteps(steps)
        prepared = self.action_head.prepare(*self.action_context(h_prefix), timesteps)
        return self.action_diffusion.sample(
            lambda x, t, i: self.action_head.denoise(x, i, prepared),
            (h_prefix.shape[0], c.chunk_len, c.action_dim),
            generator,
            steps,
        ).clamp(-1, 1)

    @torch.no_grad()
    def action_bins(self, h: torch.Tensor) -> torch.Tensor:
        """Greedy discrete action from one output (B, d) -> (B, A) bin centres."""
        bins = self.action_head(h).argmax(dim=-1)
        return undiscretize(bins, self.config.action_head.num_bins)

    @torch.no_grad()
    def sample_frame(
        self,
        h_frame: torch.Tensor,
        h_last: torch.Tensor,
        generator: Generators,
        steps: int | None = None,
    ) -> torch.Tensor:
        """(B, N, d), (B, d) -> next-frame latents (B, C, H, W)."""
        c = self.config
        B, N = h_frame.shape[:2]
        timesteps = self.frame_diffusion.timesteps(steps)
        prepared = self.frame_head.prepare(self.frame_condition(h_frame, h_last).reshape(B * N, -1), timesteps)
        tokens = self.frame_diffusion.sample(
            lambda x, t, i: self.frame_head.denoise(x, i, prepared), (B * N, c.token_dim), generator, steps
        )
        return unpatchify(
            tokens.reshape(B, N, c.token_dim), c.patch_size, c.latent_channels, c.latent_height, c.latent_width
        )

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _init_linear(module: nn.Module) -> None:
    """GPT-style init of the backbone and tokenizers (the heads keep AdaLN-zero)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
