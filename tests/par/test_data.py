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


def test_a_reference_makes_each_chunk_relative_to_its_first_frame():
    # actions[i] = 10 i; reference[i] = i: the chunk from step s is 10 (s + j) - s.
    length, chunk = 6, 2
    actions = 0.01 * torch.arange(length, dtype=torch.float32)[:, None] * 10
    reference = 0.01 * torch.arange(length + 1, dtype=torch.float32)[:, None]
    episode = Episode(task=0, latents=torch.zeros(length + 1, 1, 2, 2), actions=actions, reference=reference)
    window = WindowSampler([episode], steps=2, chunk=chunk).window(0, 1)
    # Frames 1 and 3 start the chunks; actions 1, 2 and 3, 4.
    expected = torch.tensor([[[0.1 - 0.01], [0.2 - 0.01]], [[0.3 - 0.03], [0.4 - 0.03]]])
    torch.testing.assert_close(window.actions[0], expected)
    # Without the reference the same window holds the actions as they are.
    plain = Episode(task=0, latents=episode.latents, actions=actions)
    torch.testing.assert_close(
        WindowSampler([plain], steps=2, chunk=chunk).window(0, 1).actions[0][:, :, 0],
        torch.tensor([[0.1, 0.2], [0.3, 0.4]]),
    )


def test_relative_chunks_are_clamped_and_a_misshapen_reference_is_refused():
    episode = Episode(task=0, latents=torch.zeros(3, 1, 2, 2), actions=torch.ones(2, 1), reference=-torch.ones(3, 1))
    assert episode.chunk_actions(torch.tensor([0]), torch.tensor([[0, 1]])).max() == 1.0
    with pytest.raises(ValueError, match="reference has shape"):
        Episode(task=0, latents=torch.zeros(3, 1, 2, 2), actions=torch.ones(2, 1), reference=torch.ones(2, 1))
