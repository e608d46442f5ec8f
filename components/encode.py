"""encode: fit (or load) a diffusers AutoencoderKL and encode every frame to latents.

    python -m components.encode --params params.yaml --demos-root data/demos \\
        --videos data/videos --validation-root data/validation --out data/encoded \\
        --metrics metrics/encode.json --plot plots/encode_recon.png

The last ``encode.holdout_episodes`` episodes of every task are held out: the VAE
never trains on them, reconstruction PSNR/SSIM are measured on them, and later
stages use them for video-prediction scoring. The video corpus's clips (``--videos``)
are VAE training frames too, and are encoded beside the demos for pretraining. Latents
are the posterior means, normalised per channel with statistics of the demos' training
frames. The output folder's
layout is components.formats.latents'.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from components.console import log, run_cli
from components.errors import ComponentError
from components.formats.corpus import iter_clips, read_corpus_manifest
from components.formats.dataset import Demo, iter_demos, read_manifest
from components.formats.files import atomic_output, read_json, write_json
from components.formats.latents import Corpus, write_encoded
from components.formats.params import EncodeParams, load_params
from components.formats.plots import save_grid
from components.ml.metrics import psnr, ssim
from components.ml.vae import decode_latents, encode_frames, load_vae, to_unit, train_vae


def read_datasets(datasets: list[Path], holdout_episodes: int) -> tuple[list[dict], dict[str, list[Demo]], dict]:
    """Manifests, every task's demos, and how many of each task's last episodes are held out."""
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
        holdout[task] = min(holdout_episodes, len(episodes) - 1)
        if holdout[task] < holdout_episodes:
            log.warning("%s has %d episodes: holding out %d instead of %d", task, len(episodes), holdout[task],
                        holdout_episodes)  # fmt: skip
    return manifests, demos, holdout


def _vae(frames: np.ndarray, tasks: list[str], params: EncodeParams, progress: bool) -> Any:
    if params.vae_source == "train":
        log.info("training the VAE on %d frames of %s", len(frames), ", ".join(tasks))
        return train_vae(frames, params.vae, progress)
    if not params.pretrained_path or not Path(params.pretrained_path).is_dir():
        raise ComponentError(f"encode.pretrained_path {params.pretrained_path!r} is not a diffusers VAE folder")
    return load_vae(params.pretrained_path)


def reconstruction(vae: Any, frames: np.ndarray, batch_size: int, plot_path: Path) -> dict[str, float]:
    """PSNR and SSIM of the VAE's reconstruction of ``frames``; a picture of 8 of them."""
    real = to_unit(frames).add(1).div(2)
    fake = decode_latents(vae, encode_frames(vae, frames, batch_size), batch_size)
    pick = np.linspace(0, len(real) - 1, min(8, len(real))).astype(int)
    save_grid(real[pick], fake[pick], plot_path)
    return {
        "recon_psnr": round(float(psnr(fake, real).mean()), 3),
        "recon_ssim": round(float(ssim(fake, real).mean()), 4),
    }


def read_videos(videos: Path | None, frame_shape: list[int]) -> tuple[list[dict], list[np.ndarray]]:
    """The corpus's clip entries and frames (none without ``videos``); its frames must
    have the demos' shape."""
    if videos is None:
        return [], []
    manifest = read_corpus_manifest(videos)
    if manifest["clips"] and list(manifest["frame_shape"]) != list(frame_shape):
        raise ComponentError(
            f"video corpus {videos} has frames of shape {manifest['frame_shape']}, the demos {list(frame_shape)}"
        )
    return manifest["clips"], [clip.frames for clip in iter_clips(videos, manifest)]


def encode(
    datasets: list[Path],
    params: EncodeParams,
    out: Path,
    metrics_path: Path,
    plot_path: Path,
    progress: bool = True,
    videos: Path | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    manifests, demos, holdout = read_datasets(datasets, params.holdout_episodes)
    clips, clip_frames = read_videos(videos, manifests[0]["frame_shape"])
    train_frames = np.concatenate([d.frames for task, eps in demos.items() for d in eps[: len(eps) - holdout[task]]])
    test_frames = [d.frames for task, eps in demos.items() for d in eps[len(eps) - holdout[task] :]]
    fit_corpus = bool(clips) and params.vae_frames == "demos_and_corpus"
    fitted = np.concatenate([train_frames, *clip_frames]) if fit_corpus else train_frames
    vae = _vae(fitted, list(demos) + ["the video corpus"] * fit_corpus, params, progress)
    vae_seconds = time.perf_counter() - started

    encode_started = time.perf_counter()
    raw = {task: [encode_frames(vae, d.frames, params.batch_size) for d in eps] for task, eps in demos.items()}
    corpus = Corpus(clips, [encode_frames(vae, frames, params.batch_size) for frames in clip_frames])
    n_frames = sum(len(z) for eps in raw.values() for z in eps) + sum(len(z) for z in corpus.latents)
    fps = n_frames / (time.perf_counter() - encode_started)
    with atomic_output(out) as tmp:
        stats = write_encoded(tmp, vae, manifests, demos, raw, holdout, corpus)

    # Reconstruction of held-out episodes (or of training frames when none is held out).
    eval_frames = np.concatenate(test_frames) if test_frames else train_frames[:256]
    metrics = {
        **reconstruction(vae, eval_frames, params.batch_size, plot_path),
        "eval_frames": len(eval_frames),
        "eval_on": "held-out episodes" if test_frames else "training frames (no episode held out)",
        "latent_shape": stats["latent_shape"],
        "corpus_clips": stats["corpus"]["clips"],
        "corpus_frames": stats["corpus"]["frames"],
        "encode_frames_per_s": round(fps, 1),
        "vae_seconds": round(vae_seconds, 1),
    }
    write_json(metrics_path, metrics)
    log.info(
        "encoded %d frames (%.0f frames/s); held-out reconstruction PSNR %.2f dB, SSIM %.3f",
        *(n_frames, fps, metrics["recon_psnr"], metrics["recon_ssim"]),
    )
    return metrics


def require_validated(datasets: list[Path], validation_root: Path) -> None:
    """Refuse to encode a dataset whose validation failed or is missing."""
    for dataset in datasets:
        results = read_json(validation_root / dataset.name / "results.json", "validation results")
        if not results.get("success"):
            raise ComponentError(
                f"dataset {dataset} failed validation ({validation_root / dataset.name}); not encoding"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", help="params file (section encode)")
    parser.add_argument("--demos", nargs="+", type=Path, help="dataset folders from collect")
    parser.add_argument("--demos-root", type=Path, help="folder of datasets, one per task of params `tasks`")
    parser.add_argument("--videos", type=Path, help="the video corpus (components.videos), if any")
    parser.add_argument(
        "--validation-root", type=Path, help="folder of validate's results; encode refuses data that failed"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (vae, latents, stats)")
    parser.add_argument("--metrics", required=True, type=Path, help="reconstruction metrics JSON")
    parser.add_argument("--plot", required=True, type=Path, help="real vs reconstructed picture (PNG)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    if bool(args.demos) == bool(args.demos_root):
        parser.error("give either --demos or --demos-root")
    datasets = args.demos or [args.demos_root / task for task in params.tasks]
    if args.validation_root:
        require_validated(datasets + ([args.videos] if args.videos else []), args.validation_root)
    encode(datasets, params.encode, args.out, args.metrics, args.plot, not args.no_progress, args.videos)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
