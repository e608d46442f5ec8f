"""Synthetic physical sequences for the demo and the tests.

A point moves on a plane towards a target that depends on the task; the "frame"
latent draws the point (channel 0) and the target (channel 1) as Gaussian bumps.
Actions command the point's velocity, so the next frame depends on the action and
the action on the frame: both heads have something real to learn.
"""

from __future__ import annotations

import torch

from par.config import ModelConfig
from par.data import Episode


def _bump(center: torch.Tensor, height: int, width: int, sigma: float = 0.25) -> torch.Tensor:
    ys = torch.linspace(-1, 1, height)[:, None]
    xs = torch.linspace(-1, 1, width)[None, :]
    return torch.exp(-((xs - center[0]) ** 2 + (ys - center[1]) ** 2) / (2 * sigma**2))


def _target(task: int, goal: torch.Tensor) -> torch.Tensor:
    return (goal, -goal, goal.flip(0))[task % 3]


def make_episodes(config: ModelConfig, num_episodes: int, length: int = 48, seed: int = 0) -> list[Episode]:
    """``num_episodes`` episodes of ``length`` actions, tasks cycling over the config's."""
    g = torch.Generator().manual_seed(seed)
    C, H, W, A = config.latent_channels, config.latent_height, config.latent_width, config.action_dim
    episodes = []
    for e in range(num_episodes):
        task = e % config.num_tasks
        pos = torch.rand(2, generator=g) * 1.6 - 0.8
        goal = torch.rand(2, generator=g) * 1.6 - 0.8
        target = _target(task, goal)
        frames, states, actions = [], [], []
        vel = torch.zeros(2)
        for t in range(length + 1):
            frame = torch.zeros(C, H, W)
            frame[0] = _bump(pos, H, W) * 2 - 0.5
            if C > 1:
                frame[1] = _bump(target, H, W) * 2 - 0.5
            frames.append(frame)
            state = torch.zeros(config.proprio_dim)
            state[: min(2, config.proprio_dim)] = pos[: config.proprio_dim]
            state[2 : min(4, config.proprio_dim)] = vel[: max(0, config.proprio_dim - 2)]
            states.append(state)
            if t == length:
                break
            vel = ((target - pos) * 0.5).clamp(-1, 1)
            action = torch.zeros(A)
            action[: min(2, A)] = vel[:A]
            action[2:] = torch.tanh(pos.repeat(A)[: A - 2] * 2) if A > 2 else action[2:]
            actions.append(action)
            pos = (pos + 0.15 * vel).clamp(-1, 1)
        episodes.append(
            Episode(
                task=task,
                latents=torch.stack(frames),
                actions=torch.stack(actions),
                proprio=torch.stack(states) if config.proprio_dim else None,
            )
        )
    return episodes
