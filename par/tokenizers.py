"""Tokenizers: frame latents -> patch tokens, actions -> one token per step, state.

Frames arrive as normalised VAE latents ``(..., C, H, W)``; the VAE lives in the data
pipeline, the model only sees latents.
"""

from __future__ import annotations

import torch
from torch import nn

from par.config import ModelConfig


def patchify(latents: torch.Tensor, patch: int) -> torch.Tensor:
    """(..., C, H, W) -> (..., N, C * p * p) with N = (H / p) * (W / p), row-major."""
    *lead, C, H, W = latents.shape
    x = latents.reshape(-1, C, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (M, H/p, W/p, C, p, p)
    return x.reshape(*lead, (H // patch) * (W // patch), C * patch * patch)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int, height: int, width: int):
    """Inverse of :func:`patchify`: (..., N, C * p * p) -> (..., C, H, W)."""
    *lead, N, D = tokens.shape
    if (height // patch) * (width // patch) != N or channels * patch * patch != D:
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not form a {channels}x{height}x{width} latent")
    x = tokens.reshape(-1, height // patch, width // patch, channels, patch, patch)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (M, C, H/p, p, W/p, p)
    return x.reshape(*lead, channels, height, width)


def check_shape(name: str, tensor: torch.Tensor, expected: tuple[int | None, ...]) -> None:
    """Raise a ValueError naming ``name`` when ``tensor`` does not have ``expected`` shape.

    ``None`` entries match any size.
    """
    shape = tuple(tensor.shape)
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape, strict=True)):
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} has shape {shape}, expected {want}")
    if not torch.is_floating_point(tensor) and name not in ("task",):
        raise ValueError(f"{name} must be a floating point tensor, got {tensor.dtype}")


class FrameTokenizer(nn.Module):
    """Linear patch embedding plus a learned spatial embedding per patch."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.patch = config.patch_size
        self.proj = nn.Linear(config.token_dim, config.d_model)
        self.spatial = nn.Parameter(torch.randn(config.frame_tokens, config.d_model) * 0.02)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., C, H, W) -> (..., N, d_model)."""
        return self.proj(patchify(latents, self.patch)) + self.spatial


class ActionTokenizer(nn.Module):
    """MLP over each action of a chunk, plus the action's index in the chunk."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(config.action_dim, config.d_model),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.d_model, config.d_model),
        )
        self.index = nn.Parameter(torch.randn(config.chunk_len, config.d_model) * 0.02)

    def forward(self, actions: torch.Tensor, start: int = 0) -> torch.Tensor:
        """(..., n, A) -> (..., n, d_model): actions ``start .. start + n - 1`` of a chunk."""
        return self.mlp(actions) + self.index[start : start + actions.shape[-2]]


def discretize(actions: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Actions in [-1, 1] -> bin indices in [0, num_bins)."""
    scaled = (actions.clamp(-1, 1) + 1) / 2 * (num_bins - 1)
    return scaled.round().long()


def undiscretize(bins: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Bin indices -> bin centres in [-1, 1]."""
    return bins.to(torch.float32) / (num_bins - 1) * 2 - 1
