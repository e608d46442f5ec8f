"""Contracts 2, 3, 5 and 6, plus overfitting, configs and input errors."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from par.config import ModelConfig, apply_ablation, model_config
from par.data import WindowSampler
from par.model import PAR, Batch
from par.synthetic import make_episodes
from par.training import TrainConfig, Trainer
from tests.par.helpers import random_batch, tiny_config


def _perturb_from(batch: Batch, step: int) -> Batch:
    """A copy of ``batch`` whose steps >= ``step`` (inputs and targets) are different."""
    frames, proprio, actions = batch.frames.clone(), batch.proprio.clone(), batch.actions.clone()
    frames[:, step:] += torch.randn_like(frames[:, step:])
    proprio[:, step:] += torch.randn_like(proprio[:, step:])
    actions[:, step:] = torch.rand_like(actions[:, step:]) * 2 - 1
    return Batch(batch.task, frames, proprio, actions)


@pytest.mark.parametrize("ablation", ["none", "no_ar", "discrete_actions"])
def test_causality_by_perturbation(ablation):
    """Contract 2: changing step n+1 and later leaves every output of steps <= n unchanged."""
    config = apply_ablation(tiny_config(), ablation)
    model = PAR(config).eval()
    batch = random_batch(config)
    K, N = batch.steps, config.frame_tokens
    h = model.hidden(batch)
    cond = model.frame_condition(h[:, :, :N], h[:, :, -1])
    for n in range(K - 1):
        other = _perturb_from(batch, n + 1)
        h2 = model.hidden(other)
        torch.testing.assert_close(h2[:, : n + 1], h[:, : n + 1], rtol=0, atol=1e-6)
        cond2 = model.frame_condition(h2[:, :, :N], h2[:, :, -1])
        torch.testing.assert_close(cond2[:, : n + 1], cond[:, : n + 1], rtol=0, atol=1e-6)
        assert not torch.allclose(h2[:, n + 1], h[:, n + 1])  # the perturbation is real


def test_frame_group_does_not_see_its_own_actions():
    config = tiny_config()
    model = PAR(config).eval()
    batch = random_batch(config)
    other = Batch(batch.task, batch.frames, batch.proprio, batch.actions.clone())
    other.actions[:, 1] = -other.actions[:, 1]
    h, h2 = model.hidden(batch), model.hidden(other)
    prefix = model.prefix_tokens  # frame, state and BOA of step 1 come before its actions
    torch.testing.assert_close(h2[:, 1, :prefix], h[:, 1, :prefix], rtol=0, atol=1e-6)
    assert not torch.allclose(h2[:, 1, prefix:], h[:, 1, prefix:])


@pytest.mark.parametrize("ablation", ["none", "no_ar", "discrete_actions"])
@pytest.mark.parametrize("video", [False, True])
def test_parallel_loss_equals_step_by_step(ablation, video):
    """Contract 3: the teacher-forced loss of a window equals the loss computed step by step."""
    if video and ablation == "discrete_actions":
        pytest.skip("video batches have no actions")
    config = apply_ablation(tiny_config(), ablation)
    model = PAR(config).eval()
    batch = random_batch(config, video=video)
    noise = model.draw_noise(batch, torch.Generator().manual_seed(3))
    parallel = model.loss(batch, noise)
    stepwise = torch.stack(
        [model.loss(batch.slice_steps(t + 1), noise.slice_steps(0, t + 1)).per_step[-1] for t in range(batch.steps)]
    )
    torch.testing.assert_close(parallel.per_step, stepwise, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parallel.total, stepwise.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ablation", ["none", "no_ar", "discrete_actions", "no_video_pretrain"])
def test_every_ablation_trains_a_step(ablation):
    """Contract 6: ablations are configuration; each one trains."""
    config = apply_ablation(tiny_config(), ablation)
    model = PAR(config)
    sampler = WindowSampler(make_episodes(config, 6, length=12), config.context_steps, config.chunk_len)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(model, sampler, TrainConfig(steps=2, batch_size=4, warmup_steps=0))
    trainer.run()
    assert trainer.step == 2
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("transformer.") for k in changed)
    assert any(k.startswith("action_head.") for k in changed)


def test_ablation_configs_differ_only_where_named():
    base = tiny_config()
    assert apply_ablation(base, "no_ar").no_ar and apply_ablation(base, "no_ar").window_steps == 1
    assert apply_ablation(base, "discrete_actions").action_head.kind == "discrete"
    assert apply_ablation(base, "no_video_pretrain") == base  # a training choice, same network
    with pytest.raises(ValueError, match="unknown ablation 'sideways'"):
        apply_ablation(base, "sideways")


@pytest.mark.slow
def test_tiny_model_overfits_one_batch():
    config = model_config("tiny")
    model = PAR(config)
    sampler = WindowSampler(make_episodes(config, 8, length=40), config.context_steps, config.chunk_len)
    batch = sampler.sample(4, torch.Generator().manual_seed(0))
    noise = model.draw_noise(batch, torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(100):
        loss = model.loss(batch, noise).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"overfit: {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert losses[-1] * 10 <= losses[0], f"loss went from {losses[0]:.4f} to {losses[-1]:.4f}"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"d_model_typo": 64}, "d_model_typo"),
        ({"d_model": -8}, "d_model"),
        ({"n_layers": 0}, "n_layers"),
        ({"chunk_len": 0}, "chunk_len"),
        ({"proprio_dim": -1}, "proprio_dim"),
        ({"d_model": 30, "n_heads": 4}, "n_heads"),
        ({"latent_height": 7}, "latent_height"),
        ({"action_head": {"width": 30, "n_heads": 4}}, "action_head.n_heads"),
        ({"frame_head": {"diffusion": {"num_train_timesteps": 10, "num_inference_steps": 20}}}, "num_inference_steps"),
        ({"frame_head": {"depth": "deep"}}, "depth"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ValidationError, match=field.replace(".", r"\.")):
        tiny_config(**overrides)


def test_unknown_size_is_an_error():
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        model_config("huge")


def test_named_sizes_build_and_grow():
    sizes = {name: model_config(name) for name in ("tiny", "small", "base")}
    counts = {name: PAR(cfg).num_parameters() for name, cfg in sizes.items()}
    assert counts["tiny"] < counts["small"] < counts["base"]
    paper = model_config("paper")
    # 256 instruction tokens + 5 x (360 frame + 1 BOA + 8 action) tokens.
    assert paper.frame_tokens == 360 and paper.context_tokens == 256 + 5 * (360 + 1 + 8)
    assert isinstance(ModelConfig.model_validate_json(paper.model_dump_json()), ModelConfig)


@pytest.mark.parametrize(
    "name, make, message",
    [
        ("frames", lambda b: Batch(b.task, b.frames[:, :, :1], b.proprio, b.actions), "frames has shape"),
        ("actions", lambda b: Batch(b.task, b.frames, b.proprio, b.actions[..., :2]), "actions has shape"),
        ("proprio", lambda b: Batch(b.task, b.frames, None, b.actions), "proprio is required"),
        ("task", lambda b: Batch(b.task + 10, b.frames, b.proprio, b.actions), "task ids must lie in"),
        ("steps", lambda b: Batch(b.task, b.frames[:, :1], b.proprio[:, :1], b.actions[:, :0]), "at least 2 frames"),
    ],
)
def test_bad_batch_names_the_input(name, make, message):
    config = tiny_config()
    model = PAR(config)
    with pytest.raises(ValueError, match=message):
        model.loss(make(random_batch(config)))
