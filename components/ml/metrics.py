"""Image metrics (PSNR, SSIM) and success-rate statistics shared by the components."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB of (N, C, H, W) images in [0, data_range]."""
    mse = (pred - target).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5) of (N, C, H, W)."""
    C = pred.shape[1]
    window = _gaussian_window().to(pred)[None, None].expand(C, 1, 11, 11)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=C)

    mu_x, mu_y = blur(pred), blur(target)
    sigma_x = blur(pred * pred) - mu_x**2
    sigma_y = blur(target * target) - mu_y**2
    sigma_xy = blur(pred * target) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sigma_xy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sigma_x + sigma_y + c2)
    return (num / den).flatten(1).mean(1)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
