"""Noise schedules for the de-tokenizers, on diffusers' schedulers.

Training noises with the DDPM forward process (epsilon objective); sampling runs a
fast sampler (DDIM by default) over ``num_inference_steps``. All randomness comes
from an explicit ``torch.Generator`` so that generation is reproducible; a batch of
independent rollouts passes one generator per rollout (:data:`Generators`), and each
rollout's rows then get exactly the noise they would get alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from par.config import DiffusionConfig

# One generator for the whole batch, or one per group of rows (a batch of B independent
# rollouts, each owning B' / B consecutive rows), or None (torch's global generator).
Generators = torch.Generator | Sequence[torch.Generator] | None


def gaussian(shape: tuple[int, ...], generator: Generators) -> torch.Tensor:
    """Standard normal noise of ``shape``. With one generator per group of rows, group
    ``g`` is drawn from ``generator[g]`` as one tensor, exactly as a batch of that group
    alone would draw it from one generator."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator)
    groups = len(generator)
    if groups == 0 or shape[0] % groups:
        raise ValueError(f"{groups} generators cannot split a batch of {shape[0]} rows into equal groups")
    rows = (shape[0] // groups, *shape[1:])
    return torch.cat([torch.randn(rows, generator=g) for g in generator])


_SAMPLERS = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpmsolver": DPMSolverMultistepScheduler}


class Diffusion:
    """Forward noising and reverse sampling for one head."""

    def __init__(self, config: DiffusionConfig) -> None:
        self.config = config
        common = dict(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule=config.beta_schedule,
            prediction_type="epsilon",
        )
        self.train_scheduler = DDPMScheduler(**common, clip_sample=False)
        sampler_kwargs: dict = dict(common, timestep_spacing=config.timestep_spacing)
        if config.sampler in ("ddim", "ddpm"):
            clip = config.clip_sample is not None
            sampler_kwargs.update(clip_sample=clip, clip_sample_range=config.clip_sample or 1.0)
        self.sampler = _SAMPLERS[config.sampler](**sampler_kwargs)

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.train_scheduler.add_noise(x0, noise, t)

    def timesteps(self, steps: int | None = None) -> torch.Tensor:
        """The sampler's timesteps (long, first to last) for ``steps`` inference steps."""
        self.sampler.set_timesteps(steps or self.config.num_inference_steps)
        return self.sampler.timesteps.to(torch.long)

    @torch.no_grad()
    def sample(
        self,
        predict_eps: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
        shape: tuple[int, ...],
        generator: Generators,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from Gaussian noise; ``predict_eps(x, t_batch, i)`` for
        the i-th of :meth:`timesteps`."""
        x = gaussian(shape, generator)
        for i, t in enumerate(self.timesteps(steps)):
            t_batch = torch.full((shape[0],), int(t), dtype=torch.long)
            eps = predict_eps(x, t_batch, i)
            x = self._step(eps, t, x, generator)
        return x

    def _step(self, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor, generator: Generators) -> torch.Tensor:
        """One reverse step. Of the samplers only DDPM adds noise in a step (DDIM runs with
        eta 0, DPM-Solver++ is deterministic); with per-group generators its steps run a
        group at a time, each with its own generator (DDPM's step holds no state)."""
        if generator is None or isinstance(generator, torch.Generator):
            return self.sampler.step(eps, t, x, generator=generator).prev_sample
        if not isinstance(self.sampler, DDPMScheduler):
            return self.sampler.step(eps, t, x).prev_sample
        groups = len(generator)
        return torch.cat([
            self.sampler.step(e, t, xg, generator=g).prev_sample
            for e, xg, g in zip(eps.chunk(groups), x.chunk(groups), generator, strict=True)
        ])  # fmt: skip
