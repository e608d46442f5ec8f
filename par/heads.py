"""De-tokenizers: diffusion heads for frame tokens and action chunks, and the
discrete-action head of the ``discrete_actions`` ablation.

Both diffusion heads predict the noise (epsilon) added to their target and are
conditioned through AdaLN-zero: LayerNorm without affine parameters, then a scale,
shift and residual gate computed from the conditioning vector, with the gate's
projection initialised to zero so that every block starts as the identity (DiT).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from par import invariant
from par.config import ActionHeadConfig, FrameHeadConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: (M,) -> (M, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.width))

    def shared(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The embeddings of a sampling call's timesteps, which all of its batch shares."""
        with invariant.shared():
            return self(timesteps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def per_timestep(mods: list[tuple[torch.Tensor, ...]], steps: int) -> list[list[tuple[torch.Tensor, ...]]]:
    """Modulations computed for all timesteps at once (second dim T) -> one list a step."""
    return [[tuple(part[:, i] for part in mod) for mod in mods] for i in range(steps)]


class AdaLNMLPBlock(nn.Module):
    """Residual MLP block with AdaLN-zero modulation."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width * 2), nn.SiLU(), nn.Linear(width * 2, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(shift, scale, gate) from the conditioning vector."""
        return self.ada(c).chunk(3, dim=-1)

    def apply(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        shift, scale, gate = mod
        return x + gate * self.mlp(modulate(self.norm(x), shift, scale))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.modulation(c))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.out = nn.Linear(width, out_dim)
        for layer in (self.ada[1], self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.ada(c).chunk(2, dim=-1)

    def apply(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        shift, scale = mod
        return self.out(modulate(self.norm(x), shift, scale))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.apply(x, self.modulation(c))


class FrameDiTHead(nn.Module):
    """Per-token denoiser of frame latent tokens, conditioned on a transformer output."""

    def __init__(self, config: FrameHeadConfig, token_dim: int, cond_dim: int) -> None:
        super().__init__()
        width = config.width
        self.inp = nn.Linear(token_dim, width)
        self.cond = nn.Linear(cond_dim, width)
        self.time = TimestepEmbedder(width)
        self.blocks = nn.ModuleList(AdaLNMLPBlock(width) for _ in range(config.depth))
        self.final = FinalLayer(width, token_dim)

    def modulations(self, c: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        """Every block's AdaLN modulation (and the final layer's) from conditioning c."""
        return [block.modulation(c) for block in self.blocks] + [self.final.modulation(c)]

    def run(self, x: torch.Tensor, mods: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        h = self.inp(x)
        for block, mod in zip(self.blocks, mods[:-1], strict=True):
            h = block.apply(h, mod)
        return self.final.apply(h, mods[-1])

    def prepare(self, cond: torch.Tensor, timesteps: torch.Tensor) -> list[list[tuple[torch.Tensor, ...]]]:
        """Modulations of a whole sampling call: cond (M, cond_dim), timesteps (T,).

        The conditioning is fixed and the timesteps are known in advance, so every
        step's AdaLN projections are computed at once (one large matmul a layer
        instead of T small ones, which on a CPU cost about as much each as the
        large one does); ``prepared[i]`` serves the i-th timestep.
        """
        c = self.cond(cond)[:, None] + self.time.shared(timesteps)[None]  # (M, T, width)
        return per_timestep(self.modulations(c), len(timesteps))

    def denoise(self, x: torch.Tensor, i: int, prepared: list) -> torch.Tensor:
        """eps of x at the i-th timestep of the ``prepare``d call."""
        return self.run(x, prepared[i])

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x: (M, token_dim) noisy tokens; t: (M,); cond: (M, cond_dim) -> eps (M, token_dim)."""
        return self.run(x, self.modulations(self.cond(cond) + self.time(t)))


class _Attention(nn.Module):
    """Multi-head attention on SDPA; keys/values may be projected ahead of time."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.out = nn.Linear(width, width)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(source).chunk(2, dim=-1)
        return self.heads(k), self.heads(v)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        B, T, C = x.shape
        y = F.scaled_dot_product_attention(self.heads(self.q(x)), *kv)
        return self.out(y.transpose(1, 2).reshape(B, T, C))


class ActionDiTBlock(nn.Module):
    """Self-attention over the chunk, cross-attention to the context, MLP; AdaLN-zero."""

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.self_attn = _Attention(width, n_heads)
        self.norm_x = nn.LayerNorm(width)
        self.cross_attn = _Attention(width, n_heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(approximate="tanh"), nn.Linear(4 * width, width))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(..., width) -> six (..., 1, width) terms, broadcast over the chunk."""
        return self.ada(c)[..., None, :].chunk(6, dim=-1)

    def apply(
        self, x: torch.Tensor, mod: tuple[torch.Tensor, ...], context_kv: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        s1, sc1, g1, s2, sc2, g2 = mod
        h = modulate(self.norm1(x), s1, sc1)
        x = x + g1 * self.self_attn(h, self.self_attn.keys_values(h))
        x = x + self.cross_attn(self.norm_x(x), context_kv)
        return x + g2 * self.mlp(modulate(self.norm2(x), s2, sc2))

    def forward(self, x: torch.Tensor, c: torch.Tensor, context_kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.apply(x, self.modulation(c), context_kv)


class ActionDiTHead(nn.Module):
    """Denoises a whole action chunk, cross-attending to transformer outputs."""

    def __init__(self, config: ActionHeadConfig, action_dim: int, chunk_len: int, cond_dim: int) -> None:
        super().__init__()
        width = config.width
        self.inp = nn.Linear(action_dim, width)
        self.pos = nn.Parameter(torch.randn(chunk_len, width) * 0.02)
        self.context = nn.Linear(cond_dim, width)
        self.pooled = nn.Linear(cond_dim, width)
        self.time = TimestepEmbedder(width)
        self.blocks = nn.ModuleList(ActionDiTBlock(width, config.n_heads) for _ in range(config.depth))
        self.final = FinalLayer(width, action_dim)

    def modulations(self, c: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
        return [block.modulation(c) for block in self.blocks] + [self.final.modulation(c[..., None, :])]

    def run(self, x: torch.Tensor, mods: list[tuple[torch.Tensor, ...]], context_kv: list) -> torch.Tensor:
        h = self.inp(x) + self.pos
        for block, mod, kv in zip(self.blocks, mods[:-1], context_kv, strict=True):
            h = block.apply(h, mod, kv)
        return self.final.apply(h, mods[-1])

    def context_kv(self, context: torch.Tensor) -> list:
        ctx = self.context(context)
        return [block.cross_attn.keys_values(ctx) for block in self.blocks]

    def prepare(self, context: torch.Tensor, pooled: torch.Tensor, timesteps: torch.Tensor) -> tuple[list, list]:
        """Everything of a sampling call that does not depend on the noisy chunk: every
        block's cross-attention keys/values, and the AdaLN modulations of all timesteps
        (T,) at once (see FrameDiTHead.prepare)."""
        c = self.time.shared(timesteps)[None] + self.pooled(pooled)[:, None]  # (M, T, width)
        return per_timestep(self.modulations(c), len(timesteps)), self.context_kv(context)

    def denoise(self, x: torch.Tensor, i: int, prepared: tuple[list, list]) -> torch.Tensor:
        """eps of the chunk x at the i-th timestep of the ``prepare``d call."""
        per_step, context_kv = prepared
        return self.run(x, per_step[i], context_kv)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """x: (M, L, A) noisy chunk; t: (M,); context: (M, S, cond_dim); pooled: (M, cond_dim)."""
        return self.run(x, self.modulations(self.time(t) + self.pooled(pooled)), self.context_kv(context))


class DiscreteActionHead(nn.Module):
    """Logits over ``num_bins`` bins for every action dimension (ablation)."""

    def __init__(self, action_dim: int, num_bins: int, cond_dim: int) -> None:
        super().__init__()
        self.action_dim, self.num_bins = action_dim, num_bins
        self.out = nn.Linear(cond_dim, action_dim * num_bins)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., cond_dim) -> (..., action_dim, num_bins)."""
        return self.out(h).unflatten(-1, (self.action_dim, self.num_bins))
