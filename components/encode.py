"""encode: fit (or load) a diffusers AutoencoderKL and encode every frame to latents.

    python -m components.encode --params params.yaml --demos data/demos/PushCube-v1 \\
        --out data/encoded --metrics metrics/encode.json --plot plots/encode_recon.png

The last ``encode.holdout_episodes`` episodes of every task are held out: the VAE
never trains on them, reconstruction PSNR/SSIM are measured on them, and later
stages use them for video-prediction scoring. Latents are the posterior means,
normalised per channel with statistics of the training frames.

Output folder::

    vae/                   the AutoencoderKL (diffusers save_pretrained format)
    latents/<task>.npz     latents (F, C, h, w) float32 normalised, actions (S, A),
                           proprio (F, D), frame_offsets / action_offsets (E + 1,),
                           seeds (E,), holdout (E,) bool
    stats.json             latent shape and channel mean/std, and each task's manifest
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.common import ComponentError, atomic_output, log, read_json, run_cli, write_json
from components.dataset import iter_demos, read_manifest
from components.metrics import psnr, ssim
from components.params import EncodeParams, VAEParams, load_params

FORMAT = "par-latents-v2"


def build_vae(params: VAEParams, sample_size: int):
    from diffusers import AutoencoderKL

    n = len(params.block_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(params.block_channels),
        layers_per_block=params.layers_per_block,
        latent_channels=params.latent_channels,
        norm_num_groups=params.norm_num_groups,
        sample_size=sample_size,
        mid_block_add_attention=params.mid_block_attention,
    )


def to_unit(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1


def hard_pixel_error(err: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean of each row's largest ``fraction`` of per-pixel errors: (B, P) -> scalar."""
    k = max(1, round(fraction * err.shape[1]))
    return err.topk(k, dim=1).values.mean()


def train_vae(frames: np.ndarray, params: VAEParams, progress: bool = True):
    """Fit an AutoencoderKL to uint8 frames (N, H, W, 3): MSE + hard-pixel MSE + kl_weight * KL."""
    from tqdm import tqdm

    torch.manual_seed(params.seed)
    vae = build_vae(params, frames.shape[1])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=params.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, params.lr, total_steps=params.steps, pct_start=0.05)
    generator = torch.Generator().manual_seed(params.seed)
    vae.train()
    bar = tqdm(range(params.steps), desc="train VAE", disable=not progress, mininterval=5)
    started = time.perf_counter()
    for step in bar:
        pick = torch.randint(0, len(frames), (params.batch_size,), generator=generator).numpy()
        x = to_unit(frames[pick])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        err = (recon - x).pow(2).mean(dim=1).flatten(1)  # (B, H * W)
        mse = err.mean()
        kl = posterior.kl().mean() / x[0].numel()
        loss = mse + params.kl_weight * kl
        if params.hard_pixel_weight:
            loss = loss + params.hard_pixel_weight * hard_pixel_error(err, params.hard_pixel_fraction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == params.steps - 1:
            bar.set_postfix(mse=f"{mse.item():.5f}")
        if not progress and (step % 250 == 0 or step == params.steps - 1):
            log.info(
                "VAE step %d/%d mse %.5f (%.1f s)", step + 1, params.steps, mse.item(), time.perf_counter() - started
            )
    return vae.eval()


@torch.no_grad()
def encode_frames(vae: Any, frames: np.ndarray, batch_size: int) -> torch.Tensor:
    """Posterior means of uint8 frames: (N, H, W, 3) -> (N, C, h, w)."""
    out = [vae.encode(to_unit(frames[i : i + batch_size])).latent_dist.mean for i in range(0, len(frames), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def decode_latents(vae: Any, latents: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Raw (un-normalised) latents -> images (N, 3, H, W) in [0, 1]."""
    out = [vae.decode(latents[i : i + batch_size]).sample for i in range(0, len(latents), batch_size)]
    return ((torch.cat(out) + 1) / 2).clamp(0, 1)


def save_grid(real: torch.Tensor, fake: torch.Tensor, path: Path, scale: int = 2) -> None:
    """Two rows (real above, reconstructed below) of (N, 3, H, W) images in [0, 1]."""
    import imageio.v3 as iio

    rows = [torch.cat(list(images), dim=2) for images in (real, fake)]  # (3, H, N W)
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).mul(255).round().byte().numpy()
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, grid)


def encode(
    datasets: list[Path], params: EncodeParams, out: Path, metrics_path: Path, plot_path: Path, progress: bool = True
) -> dict[str, Any]:
    started = time.perf_counter()
    manifests = [read_manifest(d) for d in datasets]
    tasks = [m["task"] for m in manifests]
    if len(set(tasks)) != len(tasks):
        raise ComponentError(f"two datasets hold the same task: {tasks}")
    shapes = {tuple(m["frame_shape"]) for m in manifests}
    if len(shapes) != 1:
        raise ComponentError(f"datasets have different frame shapes {sorted(shapes)}; encode needs one")
    demos = {m["task"]: list(iter_demos(d, m)) for d, m in zip(datasets, manifests, strict=True)}
    holdout = {}
    for task, episodes in demos.items():
        n = min(params.holdout_episodes, len(episodes) - 1)
        if n < params.holdout_episodes:
            log.warning(
                "%s has %d episodes: holding out %d instead of %d", task, len(episodes), n, params.holdout_episodes
            )
        holdout[task] = n
    train_frames = np.concatenate([d.frames for task, eps in demos.items() for d in eps[: len(eps) - holdout[task]]])
    test_frames = [d.frames for task, eps in demos.items() for d in eps[len(eps) - holdout[task] :]]

    if params.vae_source == "train":
        log.info("training the VAE on %d frames of %s", len(train_frames), ", ".join(tasks))
        vae = train_vae(train_frames, params.vae, progress)
    else:
        if not params.pretrained_path or not Path(params.pretrained_path).is_dir():
            raise ComponentError(f"encode.pretrained_path {params.pretrained_path!r} is not a diffusers VAE folder")
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(params.pretrained_path).eval()
    vae_seconds = time.perf_counter() - started

    encode_started = time.perf_counter()
    raw = {task: [encode_frames(vae, d.frames, params.batch_size) for d in eps] for task, eps in demos.items()}
    n_frames = sum(len(z) for eps in raw.values() for z in eps)
    fps = n_frames / (time.perf_counter() - encode_started)
    train_latents = torch.cat([z for task, eps in raw.items() for z in eps[: len(eps) - holdout[task]]])
    mean = train_latents.mean(dim=(0, 2, 3))
    std = train_latents.std(dim=(0, 2, 3)).clamp_min(1e-6)

    with atomic_output(out) as tmp:
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        (tmp / "latents").mkdir()
        for task, eps in demos.items():
            latents = torch.cat(raw[task])
            np.savez(
                tmp / "latents" / f"{task}.npz",
                latents=((latents - mean[:, None, None]) / std[:, None, None]).numpy().astype(np.float32),
                actions=np.concatenate([d.actions for d in eps]).astype(np.float32),
                proprio=np.concatenate([d.proprio for d in eps]).astype(np.float32),
                frame_offsets=np.cumsum([0] + [len(d.frames) for d in eps]),
                action_offsets=np.cumsum([0] + [len(d.actions) for d in eps]),
                seeds=np.asarray([d.seed for d in eps], dtype=np.int64),
                holdout=np.arange(len(eps)) >= len(eps) - holdout[task],
            )
        C, h, w = train_latents.shape[1:]
        write_json(
            tmp / "stats.json",
            {
                "format": FORMAT,
                "tasks": tasks,
                "latent_shape": [int(C), int(h), int(w)],
                "latent_mean": mean.tolist(),
                "latent_std": std.tolist(),
                "frame_shape": list(next(iter(shapes))),
                "holdout_episodes": holdout,
                "manifests": {m["task"]: {k: v for k, v in m.items() if k != "episodes"} for m in manifests},
            },
        )

    # Reconstruction of held-out episodes (or of training frames when none is held out).
    eval_frames = np.concatenate(test_frames) if test_frames else train_frames[:256]
    real = to_unit(eval_frames).add(1).div(2)
    fake = decode_latents(vae, encode_frames(vae, eval_frames, params.batch_size), params.batch_size)
    pick = np.linspace(0, len(real) - 1, min(8, len(real))).astype(int)
    save_grid(real[pick], fake[pick], plot_path)
    metrics = {
        "recon_psnr": round(float(psnr(fake, real).mean()), 3),
        "recon_ssim": round(float(ssim(fake, real).mean()), 4),
        "eval_frames": len(eval_frames),
        "eval_on": "held-out episodes" if test_frames else "training frames (no episode held out)",
        "latent_shape": [int(C), int(h), int(w)],
        "encode_frames_per_s": round(fps, 1),
        "vae_seconds": round(vae_seconds, 1),
    }
    write_json(metrics_path, metrics)
    log.info(
        "encoded %d frames (%.0f frames/s); held-out reconstruction PSNR %.2f dB, SSIM %.3f",
        *(n_frames, fps, metrics["recon_psnr"], metrics["recon_ssim"]),
    )
    return metrics


def load_stats(encoded: str | Path) -> dict[str, Any]:
    return read_json(Path(encoded) / "stats.json", "latent statistics")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (section encode)")
    parser.add_argument("--demos", nargs="+", type=Path, help="dataset folders from collect")
    parser.add_argument("--demos-root", type=Path, help="folder of datasets, one per task of params `tasks`")
    parser.add_argument(
        "--validation-root", type=Path, help="folder of validate's results; encode refuses data that failed"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (vae, latents, stats)")
    parser.add_argument("--metrics", required=True, type=Path, help="reconstruction metrics JSON")
    parser.add_argument("--plot", required=True, type=Path, help="real vs reconstructed picture (PNG)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if bool(args.demos) == bool(args.demos_root):
        parser.error("give either --demos or --demos-root")
    datasets = args.demos or [args.demos_root / task for task in params.tasks]
    if args.validation_root:
        require_validated(datasets, args.validation_root)
    encode(datasets, params.encode, args.out, args.metrics, args.plot, progress=not args.no_progress)


def require_validated(datasets: list[Path], validation_root: Path) -> None:
    """Refuse to encode a dataset whose validation failed or is missing."""
    for dataset in datasets:
        results = read_json(validation_root / dataset.name / "results.json", "validation results")
        if not results.get("success"):
            raise ComponentError(
                f"dataset {dataset} failed validation ({validation_root / dataset.name}); not encoding"
            )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
