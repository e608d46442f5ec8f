"""A user's video files (mp4, webm, mkv, mov, avi through ffmpeg; gif through Pillow),
decoded at a chosen frame rate and centre-cropped and resized to the pipeline's frame.

The ffmpeg binary is imageio-ffmpeg's own (in the lock file), so nothing is needed
from the system. A file that cannot be decoded raises :class:`VideoFileError` naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from components.errors import ComponentError

SUFFIXES = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif")


class VideoFileError(ComponentError):
    """A video file that cannot be decoded (or holds no frame)."""


def video_files(folder: Path) -> list[Path]:
    """The video files directly in ``folder``, by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def _timed_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """(when the frame stops being shown, in seconds; the RGB frame) for every frame."""
    if path.suffix.lower() == ".gif":
        from PIL import Image, ImageSequence

        with Image.open(path) as image:
            elapsed = 0.0
            for frame in ImageSequence.Iterator(image):
                elapsed += max(float(frame.info.get("duration", 100)), 10.0) / 1000.0  # browsers' floor
                yield elapsed, np.asarray(frame.convert("RGB"))
        return
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        rate = float(reader.get_meta_data().get("fps") or 0) or 30.0
        for i, frame in enumerate(reader):
            yield (i + 1) / rate, np.asarray(frame)[..., :3]


def fit_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """``frame`` centre-cropped to the aspect ratio of height x width, then resized to it."""
    from PIL import Image

    h, w = frame.shape[:2]
    if w * height > h * width:  # too wide: crop the sides
        keep = max(1, round(h * width / height))
        frame = frame[:, (w - keep) // 2 : (w - keep) // 2 + keep]
    else:  # too tall: crop top and bottom
        keep = max(1, round(w * height / width))
        frame = frame[(h - keep) // 2 : (h - keep) // 2 + keep]
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS), dtype=np.uint8)


def read_video(path: Path, fps: float, height: int, width: int, max_frames: int) -> np.ndarray:
    """(T, height, width, 3) uint8: the file sampled at ``fps``, each tick showing the
    frame on screen at that moment, at most ``max_frames``."""
    frames: list[np.ndarray] = []
    try:
        for shown_until, frame in _timed_frames(path):
            fitted = None
            while len(frames) < max_frames and len(frames) / fps < shown_until - 1e-9:
                fitted = fit_frame(frame, height, width) if fitted is None else fitted
                frames.append(fitted)
            if len(frames) >= max_frames:
                break
    except Exception as exc:  # imageio, ffmpeg and Pillow raise many types on bad bytes
        raise VideoFileError(f"video file {path} cannot be decoded: {type(exc).__name__}: {exc}") from exc
    if not frames:
        raise VideoFileError(f"video file {path} holds no frame")
    return np.stack(frames)
