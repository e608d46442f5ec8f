"""Reading the datasets that collect writes (see components.collect for the format)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import ComponentError
from components.formats.files import read_json

ARRAYS = ("frames", "actions", "proprio", "success", "seed")


@dataclass
class Demo:
    index: int
    file: str
    frames: np.ndarray  # (T + 1, H, W, 3) uint8
    actions: np.ndarray  # (T, A) float32
    proprio: np.ndarray  # (T + 1, D) float32
    success: np.ndarray  # (T,) bool
    seed: int


def read_manifest(dataset: str | Path) -> dict[str, Any]:
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise ComponentError(f"dataset {dataset} does not exist (run collect first)")
    manifest = read_json(dataset / "manifest.json", "manifest")
    for key in ("task", "control_mode", "camera", "episodes", "env_kwargs"):
        if key not in manifest:
            raise ComponentError(f"manifest {dataset / 'manifest.json'} has no {key!r} entry")
    return manifest


def read_demo(dataset: str | Path, index: int, entry: dict[str, Any]) -> Demo:
    """Load one episode; a missing or unreadable file is an error naming it."""
    path = Path(dataset) / entry["file"]
    if not path.is_file():
        raise ComponentError(f"episode {index} file {path} is missing")
    try:
        with np.load(path) as data:
            missing = [k for k in ARRAYS if k not in data.files]
            if missing:
                raise ComponentError(f"episode {index} file {path} lacks arrays {missing}")
            arrays = {k: data[k] for k in ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ComponentError(f"episode {index} file {path} is unreadable: {exc}") from exc
    return Demo(
        index=index,
        file=entry["file"],
        frames=arrays["frames"],
        actions=arrays["actions"],
        proprio=arrays["proprio"],
        success=arrays["success"],
        seed=int(arrays["seed"]),
    )


def iter_demos(dataset: str | Path, manifest: dict[str, Any] | None = None):
    manifest = manifest or read_manifest(dataset)
    for index, entry in enumerate(manifest["episodes"]):
        yield read_demo(dataset, index, entry)
