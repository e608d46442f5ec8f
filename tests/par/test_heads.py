"""Sampling runs the heads through precomputed, per-timestep conditioning: it must give
the very numbers the training-time forward gives at the same timestep."""

from __future__ import annotations

import torch

from par.config import ActionHeadConfig, FrameHeadConfig
from par.diffusion import Diffusion
from par.heads import ActionDiTHead, FrameDiTHead


def randomize(module: torch.nn.Module) -> torch.nn.Module:
    """AdaLN-zero starts every gate and output at zero; a trained head does not."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)
    return module.eval()


def test_frame_head_prepared_sampling_equals_forward():
    config = FrameHeadConfig(width=32, depth=2)
    head = randomize(FrameDiTHead(config, token_dim=16, cond_dim=24))
    cond, x = torch.randn(6, 24), torch.randn(6, 16)
    timesteps = Diffusion(config.diffusion).timesteps()
    prepared = head.prepare(cond, timesteps)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            expected = head(x, torch.full((6,), int(t)), cond)
            torch.testing.assert_close(head.denoise(x, i, prepared), expected, atol=1e-5, rtol=1e-5)
            assert expected.abs().mean() > 1e-3  # not trivially zero


def test_action_head_prepared_sampling_equals_forward():
    config = ActionHeadConfig(width=32, depth=2, n_heads=4)
    head = randomize(ActionDiTHead(config, action_dim=8, chunk_len=4, cond_dim=24))
    context, pooled, x = torch.randn(3, 5, 24), torch.randn(3, 24), torch.randn(3, 4, 8)
    timesteps = Diffusion(config.diffusion).timesteps()
    prepared = head.prepare(context, pooled, timesteps)
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            expected = head(x, torch.full((3,), int(t)), context, pooled)
            torch.testing.assert_close(head.denoise(x, i, prepared), expected, atol=1e-5, rtol=1e-5)
            assert expected.abs().mean() > 1e-3
