"""Small builders shared by the model tests."""

from __future__ import annotations

import torch

from par.config import ModelConfig, model_config
from par.model import Batch


def tiny_config(**overrides) -> ModelConfig:
    """A very small PAR so that contract tests run in a second or two."""
    base = dict(
        d_model=32,
        n_layers=2,
        n_heads=2,
        context_steps=4,
        chunk_len=3,
        action_dim=4,
        proprio_dim=3,
        latent_channels=2,
        latent_height=4,
        latent_width=4,
        frame_head=dict(width=32, depth=2, diffusion=dict(num_train_timesteps=50, num_inference_steps=5)),
        action_head=dict(width=32, depth=2, n_heads=2, diffusion=dict(num_train_timesteps=50, num_inference_steps=5)),
    )
    base.update(overrides)
    return model_config("tiny", **base)


def random_batch(config: ModelConfig, batch: int = 3, steps: int | None = None, video: bool = False) -> Batch:
    steps = steps or config.context_steps
    c = config
    return Batch(
        task=torch.randint(0, c.num_tasks, (batch,)),
        frames=torch.randn(batch, steps + 1, c.latent_channels, c.latent_height, c.latent_width),
        proprio=None if video or not c.proprio_dim else torch.randn(batch, steps + 1, c.proprio_dim),
        actions=None if video else torch.rand(batch, steps, c.chunk_len, c.action_dim) * 2 - 1,
    )
