"""Noise schedules for the de-tokenizers, on diffusers' schedulers.

Training noises with the DDPM forward process (epsilon objective); sampling runs a
fast sampler (DDIM by default) over ``num_inference_steps``. All randomness comes
from an explicit ``torch.Generator`` so that generation is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from par.config import DiffusionConfig

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
        generator: torch.Generator | None,
        steps: int | None = None,
    ) -> torch.Tensor:
        """Run the reverse process from Gaussian noise; ``predict_eps(x, t_batch, i)`` for
        the i-th of :meth:`timesteps`."""
        x = torch.randn(shape, generator=generator)
        for i, t in enumerate(self.timesteps(steps)):
            t_batch = torch.full((shape[0],), int(t), dtype=torch.long)
            eps = predict_eps(x, t_batch, i)
            x = self.sampler.step(eps, t, x, generator=generator).prev_sample
        return x
