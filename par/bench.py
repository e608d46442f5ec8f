"""Benchmarks of the model library; prints one JSON object measured in one run.

    python -m par.bench            # tiny and small
    python -m par.bench --quick    # tiny only, fewer repetitions (used by the tests)

* ``kv_cache_speedup``: a 10-step closed-loop episode (observe, sample the action
  chunk, commit it, predict the next frame), full recomputation time / KV-cache time,
  at batch 1 (one environment); ``kv_cache_detail`` adds batched environments, the
  transformer-only ratio (the diffusion heads' sampling costs the same either way) and
  ``control``: the episode as ``components.evaluate`` drives a robot, without the frame
  prediction (the real next frame replaces it anyway). ``call_ceiling`` is the most a
  cache can save on one call: a step's observe call at the end of a full window,
  recomputed whole against fed with the earlier steps cached (and one token alone).
  The episode's speedup can exceed neither the transformer-only ratio (the heads cost
  the same in both paths) nor, per call, this ceiling.
* ``matmul_rows``: fp32 GFLOP/s of a few-row product through many distinct weight
  matrices (as a forward pass meets them, out of cache) by row count, next to the
  memory's read bandwidth: what one cached token costs against a full window.
* ``train_tokens_per_s`` and ``mfu``: training FLOP/s (forward + backward, counted by
  ``torch.utils.flop_counter``) divided by the same run's peak of a large fp32 matmul.
* ``peak_rss_mb``: peak resident memory of a process that runs ``small`` training steps
  at the default batch size (measured in a child process, so nothing else counts).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from par.config import model_config
from par.mask import attention_mask, step_layout, window_layout
from par.model import PAR, Batch
from par.sampling import PREFIX_PARTS, Rollout
from par.training import TrainConfig, make_optimizer
from par.transformer import KVCache


def random_batch(config, batch: int, steps: int) -> Batch:
    c = config
    return Batch(
        task=torch.randint(0, c.num_tasks, (batch,)),
        frames=torch.randn(batch, steps + 1, c.latent_channels, c.latent_height, c.latent_width),
        proprio=torch.randn(batch, steps + 1, c.proprio_dim) if c.proprio_dim else None,
        actions=torch.rand(batch, steps, c.chunk_len, c.action_dim) * 2 - 1,
    )


def best_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return round(best * 1e3, 2)


def matmul_peak_flops(size: int = 2048, repeats: int = 10) -> float:
    """Best-of-3 fp32 FLOP/s of a size x size matmul."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    ms = best_ms(lambda: [a @ b for _ in range(repeats)], 3)
    return 2 * size**3 * repeats / (ms / 1e3)


def matmul_rows(rows: tuple[int, ...] = (1, 8, 18, 131), d: int = 384, layers: int = 40) -> dict:
    """GFLOP/s of (rows x d) @ (d x 4d) over ``layers`` distinct weights, best of 5,
    and GB/s of summing a 256 MB tensor."""
    weights = [torch.randn(4 * d, d) for _ in range(layers)]
    result: dict = {"weights_mb": round(layers * 4 * d * d * 4 / 1e6, 1)}
    for m in rows:
        x = torch.randn(m, d)
        ms = best_ms(lambda x=x: [x @ w.t() for w in weights], 5)
        result[f"gflops_{m}_rows"] = round(2 * m * d * 4 * d * layers / ms / 1e6, 1)
    big = torch.randn(64 * 1024 * 1024)
    result["memory_read_gbps"] = round(big.numel() * 4 / best_ms(big.sum, 3) / 1e6, 1)
    return result


def time_episode(model: PAR, episode: Batch, use_cache: bool, steps: int, predict: bool = True) -> tuple[float, float]:
    """Seconds for a closed-loop episode, and the part spent in the transformer."""
    rollout = Rollout(model, episode.task, torch.Generator().manual_seed(0), use_cache=use_cache)
    spent = [0.0]
    feed = rollout._feed

    def timed_feed(*args, **kwargs):
        start = time.perf_counter()
        out = feed(*args, **kwargs)
        spent[0] += time.perf_counter() - start
        return out

    rollout._feed = timed_feed
    start = time.perf_counter()
    for t in range(steps):
        rollout.step(episode.frames[:, t], None if episode.proprio is None else episode.proprio[:, t], predict)
    return time.perf_counter() - start, spent[0]


@torch.no_grad()
def call_ceiling(model: PAR, batch: int, repeats: int = 5) -> dict:
    """The observe call at the end of a full window (context_steps - 1 whole steps,
    then the last step's frame, state and BOA), recomputed whole against fed with the
    earlier steps cached; and the last token alone fed with everything else cached."""
    config = model.config
    last = config.context_steps - 1
    layout = window_layout(config, last).cat(step_layout(config, last, PREFIX_PARTS))
    length = len(layout)
    x = torch.randn(batch, length, config.d_model)
    full_mask = attention_mask(layout, layout)
    full_ms = best_ms(lambda: model.transformer(x, layout.position, full_mask), repeats)
    result = {"context_tokens": length, "full_ms": full_ms}
    for name, tail in (("prefix", model.prefix_tokens), ("one_token", 1)):
        start = length - tail
        cache = KVCache()
        head = layout.select(torch.arange(length) < start)
        model.transformer(x[:, :start], head.position, attention_mask(head, head), cache)
        new = layout.select(torch.arange(length) >= start)
        mask = attention_mask(new, layout)

        def feed(cache=cache, start=start, new=new, mask=mask) -> None:
            model.transformer(x[:, start:], new.position, mask, cache)
            cache.truncate(start)

        result[f"{name}_tokens"] = tail
        result[f"{name}_cached_ms"] = best_ms(feed, repeats)
    result["ceiling"] = round(result["full_ms"] / result["one_token_cached_ms"], 2)
    result["prefix_ratio"] = round(result["full_ms"] / result["prefix_cached_ms"], 2)
    return result


def kv_cache(size: str, batch: int, steps: int = 10, repeats: int = 2) -> dict:
    config = model_config(size)
    model = PAR(config).eval()
    episode = random_batch(config, batch, steps)
    time_episode(model, episode, True, 2)  # warm-up
    cached = min((time_episode(model, episode, True, steps) for _ in range(repeats)), key=lambda r: r[0])
    full = min((time_episode(model, episode, False, steps) for _ in range(repeats)), key=lambda r: r[0])
    control_cached = min(time_episode(model, episode, True, steps, False)[0] for _ in range(repeats))
    control_full = min(time_episode(model, episode, False, steps, False)[0] for _ in range(repeats))
    return {
        "batch": batch,
        "cached_s": round(cached[0], 3),
        "full_s": round(full[0], 3),
        "speedup": round(full[0] / cached[0], 2),
        "transformer_speedup": round(full[1] / cached[1], 2),
        "transformer_share_cached": round(cached[1] / cached[0], 2),
        "control": {
            "cached_s": round(control_cached, 3),
            "full_s": round(control_full, 3),
            "speedup": round(control_full / control_cached, 2),
        },
        "call_ceiling": call_ceiling(model, batch, repeats=2 if repeats == 1 else 5),
    }


def training(size: str, batch_size: int, peak: float, repeats: int) -> dict:
    config = model_config(size)
    model = PAR(config)
    optimizer = make_optimizer(model, TrainConfig())
    batch = random_batch(config, batch_size, config.context_steps)
    with FlopCounterMode(display=False) as counter:
        model.loss(batch).total.backward()
    flops = counter.get_total_flops()

    def step() -> None:
        loss = model.loss(batch).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    seconds = (time.perf_counter() - start) / repeats
    tokens = batch_size * config.context_tokens
    return {
        "params_m": round(model.num_parameters() / 1e6, 2),
        "batch_size": batch_size,
        "step_s": round(seconds, 3),
        "train_tokens_per_s": round(tokens / seconds, 1),
        "train_gflops_per_s": round(flops / seconds / 1e9, 1),
        "mfu": round(flops / seconds / peak, 3),
    }


def _rss_child(size: str, batch_size: int) -> None:
    config = model_config(size)
    model = PAR(config)
    optimizer = make_optimizer(model, TrainConfig())
    batch = random_batch(config, batch_size, config.context_steps)
    for _ in range(2):
        loss = model.loss(batch).total
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss_mb(size: str, batch_size: int) -> float:
    code = f"from par.bench import _rss_child; _rss_child({size!r}, {batch_size})"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny only, fewer repetitions")
    parser.add_argument("--batch-envs", type=int, default=16, help="batched-environment case of the KV-cache bench")
    args = parser.parse_args(argv)
    sizes = ["tiny"] if args.quick else ["tiny", "small"]
    default_batch = TrainConfig().batch_size
    peak = matmul_peak_flops(1024 if args.quick else 2048, 3 if args.quick else 10)
    result: dict = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "matmul_rows": matmul_rows(),
        "kv_cache_speedup": {},
        "kv_cache_detail": {},
        "train": {},
    }
    for size in sizes:
        single = kv_cache(size, 1, repeats=1 if args.quick else 2)
        batched = kv_cache(size, 4 if args.quick else args.batch_envs, repeats=1 if args.quick else 2)
        result["kv_cache_speedup"][size] = single["speedup"]
        result["kv_cache_detail"][size] = {"one_env": single, "batched_envs": batched}
        result["train"][size] = training(size, 8 if args.quick else default_batch, peak, 1 if args.quick else 3)
    top = sizes[-1]
    result["train_tokens_per_s"] = result["train"][top]["train_tokens_per_s"]
    result["mfu"] = result["train"][top]["mfu"]
    result["peak_rss_mb"] = peak_rss_mb(top, 8 if args.quick else default_batch)
    result["peak_rss_of"] = f"{top} training step, batch {8 if args.quick else default_batch}"
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
