"""A golden test of the model: a seeded small PAR's numbers, stored in a file, so that a
refactor that changes what the model computes fails here even when every contract
still holds.

Stored (tests/par/golden/small_par.json): for a small PAR trained 60 seeded steps on
synthetic sequences, the teacher-forced loss of two windows (total, frame, action),
the first action chunk a closed-loop rollout samples, and the next frame it predicts.
The noise and sampling draws come from seeded generators, so the numbers are the same
on every machine up to floating-point rounding, which differs between CPUs (AVX-512
against AVX2 kernels, AMD against Intel): the tolerances below are meant to allow that
and nothing more. After a change that is meant to change the numbers, regenerate the
file and say why in the commit:

    python -m tests.par.test_golden
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from par.data import WindowSampler, collate
from par.model import PAR
from par.sampling import Rollout
from par.synthetic import make_episodes
from par.training import TrainConfig, Trainer
from tests.par.helpers import tiny_config

GOLDEN = Path(__file__).with_name("golden") / "small_par.json"
LOSS_RTOL = 1e-4  # a loss is a mean over many terms: rounding moves it in the 6th digit
SAMPLE_ATOL = 2e-3  # 5 DDIM steps carry rounding through the network 5 times
TRAIN_STEPS = 60


def compute() -> dict[str, list[float] | float]:
    """The numbers the file holds, computed afresh."""
    torch.manual_seed(0)
    config = tiny_config()
    model = PAR(config)
    sampler = WindowSampler(make_episodes(config, 8, length=16, seed=0), config.context_steps, config.chunk_len)
    # Trained a little first: a fresh PAR zero-initialises its AdaLN and residual
    # outputs, so its numbers would hardly depend on most of the network.
    Trainer(
        model, sampler, TrainConfig(steps=TRAIN_STEPS, batch_size=8, lr=3e-3, warmup_steps=5, ema_decay=0, device="cpu")
    ).run()
    model.eval()
    batch = collate([sampler.window(0, 0), sampler.window(1, 2)])
    with torch.no_grad():
        loss = model.loss(batch, generator=torch.Generator().manual_seed(1))
        rollout = Rollout(model, batch.task[:1], generator=torch.Generator().manual_seed(2))
        rollout.observe(batch.frames[:1, 0], batch.proprio[:1, 0])
        actions = rollout.sample_actions()
        rollout.commit_actions(actions)
        frame = rollout.predict_frame()
    return {
        "loss": loss.total.item(),
        "frame_loss": loss.frame.item(),
        "action_loss": loss.action.item(),
        "actions": actions.flatten().tolist(),
        "frame": frame.flatten().tolist(),
    }


def test_a_seeded_small_par_computes_the_stored_numbers():
    expected = json.loads(GOLDEN.read_text())
    got = compute()
    for key in ("loss", "frame_loss", "action_loss"):
        assert abs(got[key] - expected[key]) <= LOSS_RTOL * abs(expected[key]), (key, got[key], expected[key])
    for key in ("actions", "frame"):
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(expected[key]), rtol=0, atol=SAMPLE_ATOL)


if __name__ == "__main__":
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
