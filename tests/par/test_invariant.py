"""Batch-invariant inference (par.invariant) and per-episode generators: an episode in a
batch computes, bit for bit, what it computes alone."""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from par.diffusion import gaussian
from par.invariant import batch_invariant, shared
from par.model import PAR
from par.sampling import Rollout
from tests.par.helpers import tiny_config


@pytest.mark.parametrize("episodes", [2, 3, 5])
def test_a_linear_layer_gives_each_episode_its_call_alone(episodes):
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 96), torch.randn(48)
    x = torch.randn(episodes * 7, 96)
    with batch_invariant(episodes):
        y = F.linear(x, weight, bias)
        with shared():  # what the batch shares runs as it is
            common = F.linear(x[: episodes * 2], weight, bias)
        with pytest.raises(ValueError, match=f"linear of a batch of {episodes} episodes got a first dimension of 1"):
            F.linear(x[:1], weight, bias)
    assert torch.equal(y, torch.cat([F.linear(part, weight, bias) for part in x.chunk(episodes)]))
    assert torch.equal(common, F.linear(x[: episodes * 2], weight, bias))
    torch.testing.assert_close(y, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask", ["none", "2-d", "batched", "positional"])
def test_attention_gives_each_episode_its_call_alone(mask):
    """3 episodes of 3 queries over 19 keys: the shape whose batch of 3 CPU flash
    attention rounded differently from one on an AMD EPYC host."""
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 4, 3, 16), torch.randn(3, 4, 19, 16), torch.randn(3, 4, 19, 16)
    shape = {"none": None, "2-d": (3, 19), "batched": (3, 1, 3, 19), "positional": (3, 19)}[mask]
    m = torch.rand(shape) > 0.3 if shape else None
    if m is not None:
        m[..., 0] = True  # every query sees a key

    def call(q, k, v, m):
        if mask == "positional":
            return F.scaled_dot_product_attention(q, k, v, m)
        return F.scaled_dot_product_attention(query=q, key=k, value=v, attn_mask=m)

    with batch_invariant(3):
        y = call(q, k, v, m)
        with pytest.raises(ValueError, match="scaled_dot_product_attention of a batch of 3 episodes"):
            call(q[:2], k[:2], v[:2], m[:2] if mask == "batched" else m)
    own = m.chunk(3) if mask == "batched" else [m] * 3
    alone = torch.cat(
        [call(q[i : i + 1].clone(), k[i : i + 1].clone(), v[i : i + 1].clone(), own[i]) for i in range(3)]
    )
    assert torch.equal(y, alone)
    torch.testing.assert_close(y, call(q, k, v, m), rtol=1e-5, atol=1e-5)  # the same function


def test_one_episode_enters_no_mode_and_none_is_refused():
    with batch_invariant(1):
        assert not torch.overrides._is_torch_function_mode_enabled()
    with pytest.raises(ValueError, match="at least one episode, got 0"), batch_invariant(0):
        pass


@pytest.mark.parametrize("threads", [1, 2])
def test_modules_in_the_mode_give_each_sample_what_it_gets_alone(threads):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.GroupNorm(4, 16), torch.nn.SiLU(),
            torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 32), torch.nn.LayerNorm(32),
        )  # fmt: skip
        x = torch.randn(5, 3, 8, 8)
        with torch.no_grad():
            with batch_invariant(5):
                batched = net(x)
            alone = torch.cat([net(x[i : i + 1]) for i in range(5)])
        assert torch.equal(batched, alone)
        torch.testing.assert_close(batched, net(x), rtol=1e-4, atol=1e-4)  # the same function
    finally:
        torch.set_num_threads(saved)


def test_noise_from_one_generator_per_episode_is_what_each_draws_alone():
    alone = [torch.randn(3, 2, generator=torch.Generator().manual_seed(s)) for s in (7, 8)]
    together = gaussian((6, 2), [torch.Generator().manual_seed(s) for s in (7, 8)])
    assert torch.equal(together, torch.cat(alone))
    with pytest.raises(ValueError, match="equal groups"):
        gaussian((5, 2), [torch.Generator(), torch.Generator()])


def _rollout(model: PAR, frames, proprio, seeds: list[int], samples: int) -> torch.Tensor:
    rollout = Rollout(
        model, torch.zeros(len(seeds), dtype=torch.long), [torch.Generator().manual_seed(s) for s in seeds],
        action_samples=samples,
    )  # fmt: skip
    chunks = []
    for t in range(len(frames)):
        rollout.observe(frames[t], proprio[t])
        chunks.append(rollout.sample_actions())
        rollout.commit_actions(chunks[-1])
    return torch.stack(chunks, dim=1)


def _batch_and_alone(model: PAR, seeds: list[int], samples: int, invariant: bool):
    c = model.config
    torch.manual_seed(1)
    frames = [torch.randn(len(seeds), c.latent_channels, c.latent_height, c.latent_width) for _ in range(6)]
    proprio = [torch.randn(len(seeds), c.proprio_dim) for _ in range(6)]
    with batch_invariant(len(seeds)) if invariant else contextlib.nullcontext():
        batched = _rollout(model, frames, proprio, seeds, samples)
    alone = [_rollout(model, [f[i : i + 1] for f in frames], [p[i : i + 1] for p in proprio], [s], samples)
             for i, s in enumerate(seeds)]  # fmt: skip
    return batched, torch.cat(alone)


@pytest.mark.parametrize(("samples", "sampler", "steps"), [(1, "ddim", 5), (4, "ddpm", 6)])
def test_a_batch_of_episodes_samples_what_each_episode_samples_alone(samples, sampler, steps):
    """Past the window (context_steps 4, 6 steps), with medoid draws and a stochastic
    sampler. Weights are drawn at 0.1 (the AdaLN-zero init leaves the heads constant,
    and a constant function is batch-invariant whatever the kernels do)."""
    diffusion = dict(num_train_timesteps=50, num_inference_steps=steps, sampler=sampler)  # 6: 2 x 3 episodes
    model = PAR(tiny_config(d_model=64, n_heads=4, action_head=dict(width=64, depth=2, n_heads=4, diffusion=diffusion)))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    batched, alone = _batch_and_alone(model.eval(), [11, 12, 13], samples, invariant=True)
    assert torch.equal(batched, alone)
    plain_batched, plain_alone = _batch_and_alone(model, [11, 12, 13], samples, invariant=False)
    assert not torch.equal(plain_batched, plain_alone)  # what the mode is for: without it, rounding differs
    other, _ = _batch_and_alone(model, [99, 12, 13], samples, invariant=True)
    assert not torch.equal(other[0], alone[0]) and torch.equal(other[1:], alone[1:])  # each its own generator


def test_a_generator_list_must_match_the_batch():
    model = PAR(tiny_config())
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        Rollout(model, torch.zeros(3, dtype=torch.long), [torch.Generator(), torch.Generator()])
