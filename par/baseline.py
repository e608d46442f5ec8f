"""A behaviour-cloning baseline: current frame latent + proprio -> the action chunk.

A small CNN over the frame latents and an MLP over proprioception regress the next
``chunk_len`` actions (MSE), with no history and no frame prediction. It trains on
the same windows (first step only) and acts through the same closed-loop interface
as PAR, so that every results table can put PAR next to it.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from par.diffusion import Generators
from par.model import Batch, LossOutput
from par.tokenizers import check_shape


class BCConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["bc"] = "bc"
    latent_channels: PositiveInt = 4
    latent_height: PositiveInt = 16
    latent_width: PositiveInt = 16
    action_dim: PositiveInt = 8
    chunk_len: PositiveInt = 8
    proprio_dim: int = Field(default=9, ge=0)
    num_tasks: PositiveInt = 1
    channels: list[PositiveInt] = [64, 128, 256]
    hidden: PositiveInt = 512
    # The baseline sees one step; kept so that window samplers can be shared with PAR.
    context_steps: PositiveInt = 1


class BCPolicy(nn.Module):
    def __init__(self, config: BCConfig) -> None:
        super().__init__()
        self.config = config
        layers, channels = [], config.latent_channels
        for out in config.channels:
            layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.GroupNorm(8, out), nn.SiLU()]
            channels = out
        self.encoder = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proprio = nn.Linear(config.proprio_dim, config.hidden) if config.proprio_dim else None
        self.task = nn.Embedding(config.num_tasks, config.hidden)
        self.head = nn.Sequential(
            nn.Linear(channels + config.hidden, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.SiLU(),
            nn.Linear(config.hidden, config.chunk_len * config.action_dim),
        )

    def predict(self, frame: torch.Tensor, proprio: torch.Tensor | None, task: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B, D), (B,) -> (B, L, A)."""
        c = self.config
        h = self.task(task)
        if self.proprio is not None:
            h = h + self.proprio(proprio)
        out = self.head(torch.cat([self.encoder(frame), h], dim=-1))
        return out.view(-1, c.chunk_len, c.action_dim)

    def loss(self, batch: Batch, noise: object = None, generator: torch.Generator | None = None) -> LossOutput:
        c = self.config
        B = batch.task.shape[0]
        check_shape("frames", batch.frames, (B, None, c.latent_channels, c.latent_height, c.latent_width))
        if batch.actions is None:
            raise ValueError("the behaviour-cloning baseline needs actions (it has no video mode)")
        proprio = None if batch.proprio is None else batch.proprio[:, 0]
        pred = self.predict(batch.frames[:, 0], proprio, batch.task)
        mse = F.mse_loss(pred, batch.actions[:, 0])
        zero = torch.zeros((), dtype=mse.dtype)
        return LossOutput(total=mse, frame=zero, action=mse, per_step=mse[None])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class BCRollout:
    """The closed-loop interface of ``par.sampling.Rollout`` for the baseline."""

    def __init__(self, model: BCPolicy, task: torch.Tensor, generator: Generators = None, **_: object):
        self.model, self.task = model.eval(), task
        self._frame: torch.Tensor | None = None
        self._proprio: torch.Tensor | None = None

    def observe(self, frame: torch.Tensor, proprio: torch.Tensor | None = None) -> None:
        self._frame, self._proprio = frame, proprio

    @torch.no_grad()
    def sample_actions(self) -> torch.Tensor:
        if self._frame is None:
            raise RuntimeError("sample_actions() needs a frame: call observe() first")
        return self.model.predict(self._frame, self._proprio, self.task).clamp(-1, 1)

    def commit_actions(self, actions: torch.Tensor) -> None:
        self._frame = None

    def predict_frame(self) -> None:
        return None
