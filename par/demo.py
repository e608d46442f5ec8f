"""Quick demo: train a PAR on synthetic physical sequences and watch the loss fall.

python -m par.demo --size tiny --steps 300
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import torch

from par.config import model_config
from par.data import WindowSampler
from par.model import PAR
from par.sampling import Rollout
from par.synthetic import make_episodes
from par.training import StepResult, TrainConfig, Trainer

log = logging.getLogger("par.demo")


@torch.no_grad()
def held_out_action_error(model: PAR, sampler: WindowSampler, episodes: int, seed: int) -> float:
    """Mean absolute error of sampled first chunks against the synthetic expert."""
    g = torch.Generator().manual_seed(seed)
    errors = []
    for i in range(episodes):
        window = sampler.window(i, 0)
        rollout = Rollout(model, window.task, generator=g)
        rollout.observe(window.frames[:, 0], None if window.proprio is None else window.proprio[:, 0])
        errors.append((rollout.sample_actions() - window.actions[:, 0]).abs().mean().item())
    return sum(errors) / len(errors)


def train_logged(trainer: Trainer, steps: int) -> list[float]:
    """Run ``trainer``, logging its loss every 25 steps; returns every step's loss."""
    losses: list[float] = []
    started = time.perf_counter()

    def report(r: StepResult) -> None:
        losses.append(r.loss.total.item())
        if r.step == 1 or r.step % 25 == 0 or r.step == steps:
            log.info(
                "step %4d/%d  loss %.4f (frame %.4f, action %.4f)  lr %.2e  %.2f steps/s",
                *(r.step, steps, r.loss.total.item(), r.loss.frame.item(), r.loss.action.item(), r.lr),
                r.step / (time.perf_counter() - started),
            )

    trainer.run(on_step=report)
    return losses


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="tiny", help="named model size (default: tiny)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=64, help="synthetic training episodes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    torch.manual_seed(args.seed)
    config = model_config(args.size)
    model = PAR(config)
    train = WindowSampler(make_episodes(config, args.episodes, seed=args.seed), config.context_steps, config.chunk_len)
    held_out = WindowSampler(make_episodes(config, 12, seed=args.seed + 1000), config.context_steps, config.chunk_len)
    optim = TrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=1e-3, warmup_steps=min(50, args.steps // 10), seed=args.seed
    )
    parameters_m = model.num_parameters() / 1e6
    log.info("PAR-%s: %.2fM parameters, %d steps of batch %d", args.size, parameters_m, args.steps, args.batch_size)
    error_before = held_out_action_error(model, held_out, 12, args.seed)
    started = time.perf_counter()
    losses = train_logged(Trainer(model, train, optim), args.steps)
    first, last = sum(losses[:10]) / len(losses[:10]), sum(losses[-10:]) / len(losses[-10:])
    result = {
        "size": args.size,
        "steps": args.steps,
        "loss_first10": round(first, 4),
        "loss_last10": round(last, 4),
        "loss_ratio": round(first / last, 2),
        "held_out_action_mae_before": round(error_before, 4),
        "held_out_action_mae_after": round(held_out_action_error(model, held_out, 12, args.seed), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
