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
    the interval as error bars. A progress flag's rates (``milestone``: its name and its
    points an arm), where given, get a panel of their own beside success, in the same
    colours. An arm measured at one count alone is a point, not a line."""
    plt = _pyplot()
    flag, reached = milestone or ("", {})
    panels = [("success_once", lines)] + ([(flag, reached)] if flag else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels) + 2.6, 4.5), sharey=True, squeeze=False)
    counts = sorted({demos for points in lines.values() for demos, *_ in points})
    for ax, (name, series_by_arm) in zip(axes[0], panels, strict=True):
        for k, arm in enumerate(lines):
            _study_series(ax, series_by_arm.get(arm, []), arm, f"C{k}", 1 + 0.02 * (k - len(lines) / 2))
        _study_axes(ax, counts, name)
    axes[0][0].set_ylim(0, 1)
    axes[0][0].set_ylabel("share of test episodes")
    fig.suptitle(title)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(0.80, 0.88))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0, 0.80, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _study_series(ax: Any, series: list[tuple[int, float, float, float]], arm: str, colour: str, shift: float) -> None:
    """One arm's points with their intervals, nudged sideways (``shift``) so that arms at
    one count stand side by side instead of on top of each other."""
    if not series:
        return
    demos, rate, low, high = (np.asarray(v, dtype=float) for v in zip(*sorted(series), strict=True))
    ax.errorbar(demos * shift, rate, yerr=[rate - low, high - rate], capsize=3, label=arm, color=colour, marker="o")


def _study_axes(ax: Any, counts: list[int], title: str) -> None:
    """Log demos on x, ticks at the counts measured (a margin either side), a title, a grid."""
    ax.set_xscale("log")
    if counts:
        ax.set_xlim(counts[0] / 1.6, counts[-1] * 1.6)
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.minorticks_off()
    ax.set_xlabel("demonstrations per task")
    ax.set_title(title)
    ax.grid(alpha=0.3)
