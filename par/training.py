"""Optimisation: AdamW with warmup + cosine decay, and a resumable trainer.

The trainer owns the optimizer, the step counter and the data RNG, and exposes
them as ``state_dict()`` so that a caller (the pipeline's train component) can
checkpoint and resume to the same weights as an uninterrupted run.

Data parallel: given a :class:`Shard` of a ``torch.distributed`` process group, the
model is wrapped in DistributedDataParallel and every process trains on its rows of
each global batch of ``batch_size`` windows. Every process draws the whole batch's
windows and noise from its own generator, seeded alike, and keeps its rows: together
the processes train on exactly the batch one process would, and DDP's mean of their
gradients is the gradient of the global batch's mean loss. Losses are reported as
that global mean.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from par.config import TrainConfig
from par.data import WindowSampler
from par.model import PAR, Batch, LossOutput, NoiseDraw


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, config: TrainConfig, held: Collection[str] = ()) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases, norms and embedding tables (1-D or 0-D). The
    parameters named in ``held`` get groups of their own, marked ``held`` (the trainer
    gives them a learning rate of 0 for ``config.freeze_pretrained_steps`` steps)."""

    def groups(params: list[torch.nn.Parameter], **mark: bool) -> list[dict]:
        return [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay, **mark},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **mark},
        ]

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    learning = groups([p for name, p in named if name not in held])
    holding = [g for g in groups([p for name, p in named if name in held], held=True) if g["params"]]
    return torch.optim.AdamW(learning + holding, lr=config.lr, betas=(0.9, 0.95))


@dataclass
class StepResult:
    step: int
    loss: LossOutput
    lr: float
    seconds: float
    grad_norm: float


@dataclass(frozen=True)
class Shard:
    """This process's part of every global batch: one rank of ``world_size`` processes
    of an initialised ``torch.distributed`` process group (the default: the whole batch)."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not one of {self.world_size} processes")

    def rows(self, batch_size: int) -> slice:
        """Rows ``[rank * b, (rank + 1) * b)`` of the batch, ``b = batch_size / world_size``."""
        if batch_size % self.world_size:
            raise ValueError(f"a batch of {batch_size} does not split evenly over {self.world_size} processes")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


class _Loss(torch.nn.Module):
    """The model's training loss as a module's forward: what DDP wraps (it synchronises
    the gradients of forward calls only)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, noise: NoiseDraw | None) -> LossOutput:
        return self.model.loss(batch, noise)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available (the current device, which a data-parallel caller
    sets to its local rank's GPU), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class Trainer:
    """Teacher-forced training of a PAR on sampled windows (data parallel with a :class:`Shard`)."""

    def __init__(
        self,
        model: PAR,
        sampler: WindowSampler,
        config: TrainConfig,
        shard: Shard | None = None,
        pretrained: Collection[str] = (),
    ) -> None:
        """``pretrained``: the names of the parameters taken from video pretraining, which
        ``config.freeze_pretrained_steps`` holds still at first."""
        self.model, self.sampler, self.config = model, sampler, config
        self.shard = shard or Shard()
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        model.to(self.device)
        self.net: torch.nn.Module = _Loss(model)
        if self.shard.world_size > 1:
            if not dist.is_initialized() or dist.get_world_size() != self.shard.world_size:
                raise RuntimeError(f"a shard of {self.shard.world_size} processes needs their process group")
            # Video pretraining leaves the action head unused: DDP must not wait for its gradients.
            self.net = DistributedDataParallel(self.net, find_unused_parameters=sampler.video)
        self.optimizer = make_optimizer(model, config, set(pretrained) if config.freeze_pretrained_steps else ())
        self.step = 0
        self.generator = torch.Generator().manual_seed(config.seed)
        self.ema: dict[str, torch.Tensor] | None = (
            {k: v.detach().clone() for k, v in model.state_dict().items()} if config.ema_decay > 0 else None
        )

    def train_step(self) -> StepResult:
        start = time.perf_counter()
        self.model.train()
        lr = lr_at(self.step, self.config)
        holding = self.step < self.config.freeze_pretrained_steps
        for group in self.optimizer.param_groups:
            group["lr"] = 0.0 if holding and group.get("held") else lr
        size, rows = self.config.batch_size, self.shard.rows(self.config.batch_size)
        batch = self.sampler.sample(size, self.generator, rows)
        noise = None
        if hasattr(self.model, "draw_noise"):
            noise = self.model.draw_noise(batch, self.generator, batch_size=size).rows(rows).to(self.device)
        batch = batch.to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.net(batch, noise)
        self.optimizer.zero_grad(set_to_none=True)
        out.total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self._learning(holding), self.config.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return StepResult(self.step, self._global(out), lr, time.perf_counter() - start, float(grad_norm))

    def _learning(self, holding: bool) -> Iterable[torch.nn.Parameter]:
        """The parameters this step moves: all of them, or, while held ones are held, the rest."""
        if not holding:
            return self.model.parameters()
        return [p for group in self.optimizer.param_groups if not group.get("held") for p in group["params"]]

    def _global(self, out: LossOutput) -> LossOutput:
        """The losses of the global batch: the mean of the processes' (equal shares)."""
        if self.shard.world_size == 1:
            return out
        parts = [out.total, out.frame, out.action, out.per_step]
        values = torch.cat([p.detach().float().reshape(-1).to(self.device) for p in parts])
        dist.all_reduce(values)
        values /= self.shard.world_size
        return LossOutput(total=values[0], frame=values[1], action=values[2], per_step=values[3:])

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
        """Everything a resume needs. Data parallel, ``ranks`` holds every process's data
        RNG and sampler state: a collective call, which every process must make."""
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "ema": None if self.ema is None else {k: v.cpu() for k, v in self.ema.items()},
            "sampler": self.sampler.state_dict(),
        }
        if self.shard.world_size > 1:
            ranks: list[dict | None] = [None] * self.shard.world_size
            dist.all_gather_object(ranks, {"generator": state["generator"], "sampler": state["sampler"]})
            state["ranks"] = ranks
        return state

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.optimizer.load_state_dict(state["optimizer"])
        own = state
        if self.shard.world_size > 1 or "ranks" in state:
            ranks = state.get("ranks") or [state]
            if len(ranks) != self.shard.world_size:
                raise ValueError(f"the state holds {len(ranks)} processes' data RNG, not {self.shard.world_size}")
            own = ranks[self.shard.rank]
        self.generator.set_state(own["generator"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema = {k: v.to(self.device) for k, v in state["ema"].items()}
        if own.get("sampler") is not None:  # checkpoints before it kept no sampler state
            self.sampler.load_state_dict(own["sampler"])
