"""The trainer: learning-rate schedule, EMA weights, and exact resume from its state."""

from __future__ import annotations

import pytest
import torch

from par.data import WindowSampler
from par.model import PAR, VIDEO_PREFIXES
from par.synthetic import make_episodes
from par.training import Shard, TrainConfig, Trainer, lr_at
from tests.par.helpers import tiny_config


def _trainer(config, seed: int = 0, pretrained: frozenset[str] = frozenset(), **overrides) -> Trainer:
    torch.manual_seed(seed)
    model = PAR(config)
    sampler = WindowSampler(make_episodes(config, 6, length=12), config.context_steps, config.chunk_len)
    train = TrainConfig(steps=8, batch_size=3, warmup_steps=2, **overrides)
    return Trainer(model, sampler, train, pretrained=pretrained)


def test_lr_schedule_warms_up_then_decays():
    config = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, config) == 1e-4 and lr_at(9, config) == 1e-3
    assert lr_at(50, config) < 1e-3 and abs(lr_at(100, config) - 1e-4) < 1e-12


def test_resume_from_state_reaches_the_same_weights():
    config = tiny_config()
    straight = _trainer(config)
    straight.run()
    first = _trainer(config)
    first.run(until=4)
    state = {k: v for k, v in first.state_dict().items()}
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = _trainer(config, seed=123)  # another init: everything must come from the state
    second.model.load_state_dict(weights)
    second.load_state_dict(state)
    second.run()
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    for name, value in straight.averaged_state_dict().items():
        torch.testing.assert_close(second.averaged_state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_ema_weights_lag_the_raw_ones_and_can_be_off():
    config = tiny_config()
    trainer = _trainer(config)
    trainer.run()
    raw, averaged = trainer.model.state_dict(), trainer.averaged_state_dict()
    changed = [k for k in raw if raw[k].dtype.is_floating_point and not torch.equal(raw[k], averaged[k])]
    assert changed
    off = _trainer(config, ema_decay=0.0)
    off.run()
    assert all(torch.equal(v, off.model.state_dict()[k]) for k, v in off.averaged_state_dict().items())


def test_the_shards_of_a_batch_are_the_batch_one_process_draws():
    """Data parallel: each process keeps its rows of the global batch that every process
    draws, so the processes' rows together are the one-process batch, noise included."""
    config = tiny_config()
    model = PAR(config)
    episodes = make_episodes(config, 6, length=12)

    def draw(shard: Shard):
        sampler = WindowSampler(episodes, config.context_steps, config.chunk_len)
        generator = torch.Generator().manual_seed(3)
        rows = shard.rows(4)
        batch = sampler.sample(4, generator, rows)
        return batch, model.draw_noise(batch, generator, batch_size=4).rows(rows), sampler.drawn

    (batch, noise, drawn), *parts = draw(Shard()), draw(Shard(0, 2)), draw(Shard(1, 2))
    assert [p[0].task.shape[0] for p in parts] == [2, 2]
    for whole, field in [(batch, f) for f in ("task", "frames", "proprio", "actions")] + [
        (noise, f) for f in ("frame_noise", "frame_t", "action_noise", "action_t")
    ]:
        joined = torch.cat([getattr(p[0] if whole is batch else p[1], field) for p in parts])
        assert torch.equal(joined, getattr(whole, field)), field
    assert all(torch.equal(p[2], drawn) for p in parts)  # every process counts the whole batch
    with pytest.raises(ValueError, match="does not split evenly over 3 processes"):
        Shard(0, 3).rows(4)


def test_pretrained_weights_are_held_for_the_first_steps_then_train():
    """``freeze_pretrained_steps``: the weights named as pretrained stay as they were
    (AdamW's decay included) while the others learn; from that step on, all learn."""
    config = tiny_config()
    held = frozenset(name for name, _ in PAR(config).named_parameters() if name.startswith(VIDEO_PREFIXES))
    assert held
    trainer = _trainer(config, pretrained=held, freeze_pretrained_steps=3, ema_decay=0.0)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    def moved() -> set[str]:
        now = trainer.model.state_dict()
        return {k for k in held if not torch.equal(now[k], start[k])}

    trainer.run(until=3)
    others = [k for k, _ in trainer.model.named_parameters() if k not in held]
    assert not moved() and any(not torch.equal(trainer.model.state_dict()[k], start[k]) for k in others)
    trainer.run(until=4)
    assert moved()  # the 4th step moves them
    # no freeze: the same optimizer as ever (two groups), whatever is named pretrained
    plain = _trainer(config, pretrained=held)
    assert len(plain.optimizer.param_groups) == 2
