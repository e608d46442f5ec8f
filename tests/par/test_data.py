"""Window sampling: every env step equally likely, or every task first."""

from __future__ import annotations

import pytest
import torch

from par.data import Episode, WindowSampler


def _episode(task: int, length: int) -> Episode:
    return Episode(task=task, latents=torch.zeros(length + 1, 1, 2, 2), actions=torch.zeros(length, 1))


# Task 0: three episodes, 60 env steps; task 1: one episode of 20.
EPISODES = [_episode(0, 10), _episode(0, 20), _episode(0, 30), _episode(1, 20)]


def _task_share(sampler: WindowSampler, task: int, draws: int = 4000) -> float:
    batch = sampler.sample(draws, generator=torch.Generator().manual_seed(0))
    return float((batch.task == task).double().mean())


def test_by_default_every_env_step_is_equally_likely():
    sampler = WindowSampler(EPISODES, steps=2, chunk=2)
    assert sampler.weights.tolist() == pytest.approx([10 / 80, 20 / 80, 30 / 80, 20 / 80])
    assert _task_share(sampler, 1) == pytest.approx(0.25, abs=0.03)


def test_balanced_sampling_draws_every_task_equally_then_its_steps():
    sampler = WindowSampler(EPISODES, steps=2, chunk=2, balance_tasks=True)
    # Half the draws to task 1's single episode; task 0's half split by episode length.
    assert sampler.weights.tolist() == pytest.approx([0.5 * 10 / 60, 0.5 * 20 / 60, 0.5 * 30 / 60, 0.5])
    assert _task_share(sampler, 1) == pytest.approx(0.5, abs=0.03)


def test_balanced_sampling_ignores_task_ids_without_episodes():
    # Ids 0 and 2 present, 1 absent (a task with no training episodes): two tasks, not three.
    sampler = WindowSampler([_episode(0, 10), _episode(2, 30)], steps=2, chunk=2, balance_tasks=True)
    assert sampler.weights.tolist() == pytest.approx([0.5, 0.5])


def test_groups_are_drawn_by_weight_then_every_step_within_equally():
    # Group 0 (episodes 0, 1: 30 steps) at weight 3, group 1 (episodes 2, 3: 50 steps) at 1.
    sampler = WindowSampler(EPISODES, steps=2, chunk=2, groups=[0, 0, 1, 1], group_weights=[3.0, 1.0])
    assert sampler.weights.tolist() == pytest.approx([0.75 * 10 / 30, 0.75 * 20 / 30, 0.25 * 30 / 50, 0.25 * 20 / 50])
    zero = WindowSampler(EPISODES, steps=2, chunk=2, groups=[0, 0, 1, 1], group_weights=[1.0, 0.0])
    assert zero.weights[2:].tolist() == [0.0, 0.0]


def test_the_sampler_counts_the_windows_it_drew_and_keeps_the_count_in_its_state():
    sampler = WindowSampler(EPISODES, steps=2, chunk=2)
    generator = torch.Generator().manual_seed(0)
    sampler.sample(16, generator)
    sampler.sample(16, generator)
    assert int(sampler.drawn.sum()) == 32 and len(sampler.drawn) == len(EPISODES)
    fresh = WindowSampler(EPISODES, steps=2, chunk=2)
    fresh.load_state_dict(sampler.state_dict())
    assert fresh.drawn.tolist() == sampler.drawn.tolist()
