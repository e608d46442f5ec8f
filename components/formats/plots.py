"""Pictures and plot data the stages write: loss curves, real-vs-predicted frame grids,
rollout videos, per-horizon scores. PNGs and videos are for people (and MLflow); the
CSV files beside them are what ``dvc.yaml`` declares as plots, so that ``dvc plots
diff`` compares two experiments."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

LOSS_COLUMNS = ("step", "loss", "frame_loss", "action_loss")
SCORE_COLUMNS = ("task", "horizon", "psnr", "ssim", "action_mae")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Rows as CSV (a header, then one line a row; a missing value is left empty)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def save_loss_plot(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Training losses on a log scale (PNG), and the same numbers as ``<path>.csv``."""
    plt = _pyplot()
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in LOSS_COLUMNS[1:]:
        values = [h[key] for h in history]
        if any(values):
            ax.plot(steps, values, label=key)
    if history:
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    write_csv(path.with_suffix(".csv"), LOSS_COLUMNS, history)


def save_grid(real: torch.Tensor, fake: torch.Tensor, path: Path, scale: int = 2) -> None:
    """Two rows (real above, reconstructed or predicted below) of (N, 3, H, W) images in [0, 1]."""
    import imageio.v3 as iio

    rows = [torch.cat(list(images), dim=2) for images in (real, fake)]  # (3, H, N W)
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).mul(255).round().byte().numpy()
    grid = grid.repeat(scale, 0).repeat(scale, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, grid)


def write_video(frames: np.ndarray, path: Path, fps: int = 20, scale: int = 4) -> None:
    """uint8 frames (T, H, W, 3) as an mp4, enlarged ``scale`` times (64 px frames are tiny)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    imageio.mimsave(path, list(big), fps=fps, macro_block_size=1)


def save_side_by_side(pred: torch.Tensor, real: torch.Tensor, path: Path, fps: int = 4) -> None:
    """Predicted | real frames, (T, 3, H, W) in [0, 1] each, as one mp4."""
    frames = torch.cat([pred, real], dim=3).permute(0, 2, 3, 1).mul(255).round().byte().numpy()
    write_video(frames, path, fps=fps)


def save_score_plot(per_task: dict[str, dict[str, Any]], path: Path) -> None:
    """PSNR, SSIM and action error by horizon, one line a task (PNG), and ``<path>.csv``."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, key, label in zip(axes, SCORE_COLUMNS[2:], ("PSNR (dB)", "SSIM", "action MAE"), strict=True):
        for task, values in per_task.items():
            series = values.get(f"{key}_per_step") or []
            if series:
                ax.plot(range(1, len(series) + 1), series, marker="o", label=task)
        ax.set_xlabel("horizon (chunks ahead)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    write_csv(path.with_suffix(".csv"), SCORE_COLUMNS, score_rows(per_task))


def score_rows(per_task: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row a task and horizon step of the per-step score series."""
    rows = []
    for task, values in per_task.items():
        for h, action in enumerate(values.get("action_mae_per_step", []), start=1):
            row = {"task": task, "horizon": h, "action_mae": action}
            for key in ("psnr", "ssim"):
                series = values.get(f"{key}_per_step") or []
                if len(series) >= h:
                    row[key] = series[h - 1]
            rows.append(row)
    return rows


def save_study_plot(
    lines: dict[str, list[tuple[int, float, float, float]]],
    path: Path,
    title: str,
    milestone: tuple[str, dict[str, list[tuple[int, float, float, float]]]] | None = None,
) -> None:
    """Success against demonstrations, one line an arm: (demos, rate, low, high) points,
    the interval as error bars; a progress flag's rates (``milestone``: its name and its
    points an arm), where given, as open diamonds on dashed lines in the arm's colour."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    flag, dashed = milestone or ("", {})
    for k, (arm, points) in enumerate(lines.items()):
        colour = f"C{k}"
        for label, series, style in (
            (arm, points, {"linestyle": "-", "marker": "o", "mfc": colour}),
            (f"{arm}: {flag}", dashed.get(arm, []), {"linestyle": "--", "marker": "D", "mfc": "white"}),
        ):
            if not series:
                continue
            demos, rate, low, high = (np.asarray(v, dtype=float) for v in zip(*sorted(series), strict=True))
            shifted = demos * (1 + 0.02 * (k - len(lines) / 2))  # side by side, not on top of each other
            ax.errorbar(shifted, rate, yerr=[rate - low, high - rate], capsize=3, label=label, color=colour, **style)
    counts = sorted({demos for points in lines.values() for demos, *_ in points})
    ax.set_xscale("log")
    if counts:  # ticks at the counts measured, a margin either side (one count alone too)
        ax.set_xlim(counts[0] / 1.6, counts[-1] * 1.6)
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
    ax.set_xlabel("demonstrations per task")
    ax.set_ylabel(f"success_once (filled), {flag} (open, dashed)" if flag else "success_once")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the points, not on them
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
