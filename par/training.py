"""Optimisation: AdamW with warmup + cosine decay, and a resumable trainer.

The trainer owns the optimizer, the step counter and the data RNG, and exposes
them as ``state_dict()`` so that a caller (the pipeline's train component) can
checkpoint and resume to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from par.config import TrainConfig
from par.data import WindowSampler
from par.model import PAR, LossOutput


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and embedding tables (1-D or 0-D)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
        betas=(0.9, 0.95),
    )


@dataclass
class StepResult:
    step: int
    loss: LossOutput
    lr: float
    seconds: float
    grad_norm: float


class Trainer:
    """Teacher-forced training of a PAR on sampled windows."""

    def __init__(self, model: PAR, sampler: WindowSampler, config: TrainConfig) -> None:
        self.model, self.sampler, self.config = model, sampler, config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
        )
        model.to(self.device)
        self.optimizer = make_optimizer(model, config)
        self.step = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.ema: dict[str, torch.Tensor] | None = (
            {k: v.detach().clone() for k, v in model.state_dict().items()} if config.ema_decay > 0 else None
        )

    def train_step(self) -> StepResult:
        start = time.perf_counter()
        self.model.train()
        lr = lr_at(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = self.sampler.sample(self.config.batch_size, self.generator)
        noise = self.model.draw_noise(batch, self.generator) if hasattr(self.model, "draw_noise") else None
        batch = batch.to(self.device)
        noise = noise.to(self.device) if noise is not None else None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.model.loss(batch, noise)
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return StepResult(self.step, out, lr, time.perf_counter() - start, float(grad_norm))

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                self.ema[name].mul_(decay).add_(value.detach(), alpha=1 - decay)
            else:
                self.ema[name].copy_(value)

    def averaged_state_dict(self) -> dict[str, torch.Tensor]:
        """The EMA weights (or the raw ones when EMA is off), on the CPU."""
        source = self.ema if self.ema is not None else self.model.state_dict()
        return {k: v.detach().cpu().clone() for k, v in source.items()}

    def run(self, until: int | None = None, on_step: Callable[[StepResult], None] | None = None) -> None:
        """Train until ``until`` steps (default: the config's total)."""
        until = self.config.steps if until is None else until
        while self.step < until:
            result = self.train_step()
            if not torch.isfinite(result.loss.total):
                raise FloatingPointError(f"loss is {result.loss.total.item()} at step {result.step}")
            if on_step is not None:
                on_step(result)

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "ema": None if self.ema is None else {k: v.cpu() for k, v in self.ema.items()},
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        if state.get("sampler") is not None:  # checkpoints before it kept no sampler state
            self.sampler.load_state_dict(state["sampler"])
