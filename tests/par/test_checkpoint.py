"""Save/load round trips and contract 5: video-pretrained weights load into PAR."""

from __future__ import annotations

import json

import pytest
import torch

from par.checkpoint import load_model, load_pretrained, read_config, save_model
from par.data import WindowSampler
from par.model import PAR
from par.sampling import Rollout
from par.synthetic import make_episodes
from par.training import TrainConfig, Trainer
from tests.par.helpers import random_batch, tiny_config


def test_save_load_gives_identical_outputs(tmp_path):
    config = tiny_config()
    model = PAR(config)
    batch = random_batch(config)
    noise = model.draw_noise(batch, torch.Generator().manual_seed(0))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.config == config
    assert json.loads((tmp_path / "m" / "config.json").read_text())["d_model"] == config.d_model
    assert torch.equal(model.eval().loss(batch, noise).total, loaded.eval().loss(batch, noise).total)
    outs = []
    for m in (model, loaded):
        rollout = Rollout(m, batch.task, torch.Generator().manual_seed(5))
        outs.append(rollout.step(batch.frames[:, 0], batch.proprio[:, 0]))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_the_same_weights_give_the_same_bytes(tmp_path):
    """So that DVC sees the same hash for the same model (safetensors itself writes its
    metadata in a hash map's order: 6 different files in 20 saves of one model)."""
    model = PAR(tiny_config())
    for k in range(5):
        save_model(model, tmp_path / f"m{k}", extra_metadata={"run": "one", "seed": "0", "z": "last"})
    files = {(tmp_path / f"m{k}" / "model.safetensors").read_bytes() for k in range(5)}
    assert len(files) == 1
    loaded = load_model(tmp_path / "m0")  # still a safetensors file any reader takes
    pairs = zip(model.state_dict().values(), loaded.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_save_replaces_atomically(tmp_path):
    config = tiny_config()
    save_model(PAR(config), tmp_path / "m")
    other = tiny_config(n_layers=3)
    save_model(PAR(other), tmp_path / "m")
    assert read_config(tmp_path / "m").n_layers == 3
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp leftovers


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model weights"):
        load_model(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(bad)


def test_video_pretrained_weights_load_into_physical_model(tmp_path):
    """Contract 5: train frame-only, load into PAR, report taken and new weights."""
    config = tiny_config()
    video_model = PAR(config)
    episodes = make_episodes(config, 6, length=12)
    sampler = WindowSampler(episodes, config.context_steps, config.chunk_len, video=True)
    batch = sampler.sample(4, torch.Generator().manual_seed(0))
    assert batch.actions is None
    noise = video_model.draw_noise(batch, torch.Generator().manual_seed(1))
    untrained = video_model.loss(batch, noise).total.item()
    action_head_before = {k: v.clone() for k, v in video_model.state_dict().items() if k.startswith("action_")}
    Trainer(video_model, sampler, TrainConfig(steps=30, batch_size=4, lr=2e-3, warmup_steps=0)).run()
    pretrained = video_model.eval().loss(batch, noise)
    assert pretrained.total.item() < untrained and pretrained.action.item() == 0
    # Action modules got no gradient in video mode.
    assert all(torch.equal(v, video_model.state_dict()[k]) for k, v in action_head_before.items())
    save_model(video_model, tmp_path / "pretrained")

    physical = PAR(config)
    report = load_pretrained(physical, tmp_path / "pretrained")
    assert any(n.startswith("transformer.") for n in report.taken)
    assert any(n.startswith("frame_head.") for n in report.taken)
    assert any(n.startswith("action_head.") for n in report.new) and "boa" in report.new
    assert not report.mismatched
    for name in report.taken:
        assert torch.equal(physical.state_dict()[name], video_model.state_dict()[name])
    # The physical model now predicts video exactly as the pretrained one does.
    assert torch.equal(physical.eval().loss(batch, noise).total, pretrained.total)


def test_a_model_pretrained_on_more_tasks_hands_over_the_leading_task_rows(tmp_path):
    """Video pretraining on other tasks' clips gives them ids after the policy's tasks."""
    source = PAR(tiny_config(num_tasks=5))
    save_model(source, tmp_path / "pretrained")
    target = PAR(tiny_config(num_tasks=3))
    report = load_pretrained(target, tmp_path / "pretrained")
    assert "task_embed[:3]" in report.taken and not report.mismatched
    assert torch.equal(target.task_embed, source.task_embed[:3])


def test_pretrained_on_fewer_tasks_reports_mismatch(tmp_path):
    save_model(PAR(tiny_config(num_tasks=2)), tmp_path / "pretrained")
    report = load_pretrained(PAR(tiny_config(num_tasks=3)), tmp_path / "pretrained")
    assert any(m.startswith("task_embed") for m in report.mismatched)
    assert "taken" in report.summary()
