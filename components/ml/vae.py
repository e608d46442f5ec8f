"""The frame tokenizer's first half: a diffusers AutoencoderKL, built from params, fitted
to the collected frames, and used to encode frames to latents and decode them back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.console import Progress, log
from components.formats.params import VAEParams


def build_vae(params: VAEParams, sample_size: int) -> Any:
    from diffusers import AutoencoderKL

    n = len(params.block_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(params.block_channels),
        layers_per_block=params.layers_per_block,
        latent_channels=params.latent_channels,
        norm_num_groups=params.norm_num_groups,
        sample_size=sample_size,
        mid_block_add_attention=params.mid_block_attention,
    )


def load_vae(path: str | Path) -> Any:
    """An AutoencoderKL saved in diffusers' format, in eval mode."""
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(path).eval()


def to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1


def hard_pixel_error(err: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of each row's largest ``fraction`` of per-pixel errors: (B, P) -> scalar."""
    k = max(1, round(fraction * err.shape[1]))
    return err.topk(k, dim=1).values.mean()


def _vae_loss(vae: Any, x: torch.Tensor, params: VAEParams, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """MSE + hard-pixel MSE + kl_weight * KL of one batch; also the plain MSE."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample(generator=generator)).sample
    err = (recon - x).pow(2).mean(dim=1).flatten(1)  # (B, H * W)
    mse = err.mean()
    loss = mse + params.kl_weight * posterior.kl().mean() / x[0].numel()
    if params.hard_pixel_weight:
        loss = loss + params.hard_pixel_weight * hard_pixel_error(err, params.hard_pixel_fraction)
    return loss, mse.item()


def train_vae(frames: np.ndarray, params: VAEParams, progress: bool = True) -> Any:
    """Fit an AutoencoderKL to uint8 frames (N, H, W, 3)."""
    torch.manual_seed(params.seed)
    vae = build_vae(params, frames.shape[1])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=params.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, params.lr, total_steps=params.steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(params.seed)
    vae.train()
    started = time.perf_counter()
    with Progress("train VAE", params.steps, "steps", enabled=progress) as bar:
        for _ in range(params.steps):
            pick = torch.randint(0, len(frames), (params.batch_size,), generator=generator).numpy()
            loss, mse = _vae_loss(vae, to_unit(frames[pick]), params, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            bar.update(note=f"mse {mse:.5f}")
    log.info("VAE: %d steps in %.0f s, last batch mse %.5f", params.steps, time.perf_counter() - started, mse)
    return vae.eval()


@torch.no_grad()
def encode_frames(vae: Any, frames: np.ndarray, batch_size: int) -> torch.Tensor:
    """Posterior means of uint8 frames: (N, H, W, 3) -> (N, C, h, w)."""
    out = [vae.encode(to_unit(frames[i : i + batch_size])).latent_dist.mean for i in range(0, len(frames), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Raw (un-normalised) latents -> images (N, 3, H, W) in [0, 1]."""
    out = [vae.decode(latents[i : i + batch_size]).sample for i in range(0, len(latents), batch_size)]
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)
