"""Reading the datasets that collect writes (the layout: docs/data-formats.md), checked
where they are read: the manifest against :class:`Manifest`, each episode's arrays
against the manifest, so that a corrupt file is an error naming it and its problem."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from components.errors import ComponentError
from components.formats.files import check_frame_shape, read_checked_json

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


def inside_the_folder(file: str) -> str:
    """``file``, if it is a relative path that stays inside the folder of its manifest."""
    path = PurePosixPath(file)
    if path.is_absolute() or ".." in path.parts or not file:
        raise ValueError(f"{file!r} is not a path inside the dataset")
    return file


Finite = Annotated[float, Field(allow_inf_nan=False, strict=False)]


class EpisodeEntry(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    file: str
    seed: int = Field(ge=0)
    steps: int = Field(ge=1)

    _inside = field_validator("file")(lambda cls, file: inside_the_folder(file))


class Counts(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    episodes: int = Field(ge=0)
    steps: int = Field(ge=0)


class Manifest(BaseModel):
    """manifest.json of a dataset: what encode, evaluate and score rely on."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: Literal["par-demos-v2"]
    task: str = Field(min_length=1)
    control_mode: str
    robot_uids: str
    camera: dict[str, Any]
    frame_shape: list[int] = Field(min_length=3, max_length=3)
    env_kwargs: dict[str, Any]
    episodes: list[EpisodeEntry] = Field(min_length=1)
    counts: Counts
    action_dim: int = Field(ge=1)
    proprio_dim: int = Field(ge=0)
    action_min: list[Finite]
    action_max: list[Finite]
    action_space_low: list[Finite]
    action_space_high: list[Finite]
    proprio_mean: list[Finite]
    proprio_std: list[Finite]

    @model_validator(mode="after")
    def _sizes_agree(self) -> Manifest:
        for key in ("action_min", "action_max", "action_space_low", "action_space_high"):
            if len(getattr(self, key)) != self.action_dim:
                raise ValueError(f"{key} has {len(getattr(self, key))} entries, action_dim is {self.action_dim}")
        for key in ("proprio_mean", "proprio_std"):
            if len(getattr(self, key)) != self.proprio_dim:
                raise ValueError(f"{key} has {len(getattr(self, key))} entries, proprio_dim is {self.proprio_dim}")
        if self.counts.episodes != len(self.episodes):
            raise ValueError(f"counts.episodes is {self.counts.episodes} but it lists {len(self.episodes)} episodes")
        check_frame_shape(self.frame_shape)
        return self


def read_manifest(dataset: str | Path) -> dict[str, Any]:
    """A dataset's manifest, checked against :class:`Manifest`; the error names the file and field."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise ComponentError(f"dataset {dataset} does not exist (run collect first)")
    return read_checked_json(dataset / "manifest.json", "manifest", Manifest)


def load_arrays(path: Path, what: str, names: tuple[str, ...] = ARRAYS) -> dict[str, np.ndarray]:
    """The arrays ``names`` of an .npz file; a file that is not a readable archive of
    them is an error naming ``what`` and the path (truncated, empty, bad compressed
    bytes, a folder, object arrays)."""
    if not path.is_file():
        raise ComponentError(f"{what} file {path} is missing")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ComponentError(f"{what} file {path} is not an .npz archive of arrays")
        with loaded as data:
            missing = [k for k in names if k not in data.files]
            if missing:
                raise ComponentError(f"{what} file {path} lacks arrays {missing}")
            return {k: data[k] for k in names}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ComponentError(f"{what} file {path} is unreadable: {type(exc).__name__}: {exc}") from exc


def episode_problems(arrays: dict[str, np.ndarray], entry: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """What is wrong with an episode's arrays against its manifest (empty: nothing)."""
    seed = arrays["seed"]
    T = entry["steps"]
    H, W, _ = manifest["frame_shape"]
    expected = {
        "frames": ((T + 1, H, W, 3), np.uint8),
        "actions": ((T, manifest["action_dim"]), np.float32),
        "proprio": ((T + 1, manifest["proprio_dim"]), np.float32),
        "success": ((T,), np.bool_),
        "seed": ((), np.int64),
    }
    problems = [
        f"{name} is {arrays[name].dtype}{list(arrays[name].shape)}, not {np.dtype(dtype)}{list(shape)}"
        for name, (shape, dtype) in expected.items()
        if arrays[name].shape != shape or arrays[name].dtype != dtype
    ]
    for name in ("actions", "proprio"):
        if arrays[name].dtype.kind == "f" and not np.isfinite(arrays[name]).all():
            problems.append(f"{name} holds {int((~np.isfinite(arrays[name])).sum())} NaN or infinite values")
    if seed.shape == () and int(seed) != entry["seed"]:
        problems.append(f"seed is {int(seed)} but the manifest says {entry['seed']}")
    return problems


def read_demo(dataset: str | Path, index: int, entry: dict[str, Any], manifest: dict[str, Any] | None = None) -> Demo:
    """Load one episode; a missing or unreadable file is an error naming it. Given the
    dataset's ``manifest``, the arrays are also checked against it (shapes, dtypes,
    finite actions and proprio, the seed): what every reader but validate needs, which
    reports these facts itself."""
    path = Path(dataset) / entry["file"]
    arrays = load_arrays(path, f"episode {index}")
    if manifest is not None and (problems := episode_problems(arrays, entry, manifest)):
        raise ComponentError(f"episode {index} file {path}: " + "; ".join(problems))
    return Demo(
        index=index,
        file=entry["file"],
        frames=arrays["frames"],
        actions=arrays["actions"],
        proprio=arrays["proprio"],
        success=arrays["success"],
        seed=int(arrays["seed"]) if arrays["seed"].size == 1 else -1,
    )


def iter_demos(dataset: str | Path, manifest: dict[str, Any] | None = None) -> Iterator[Demo]:
    """Every episode of a dataset, checked against its manifest."""
    manifest = manifest or read_manifest(dataset)
    for index, entry in enumerate(manifest["episodes"]):
        yield read_demo(dataset, index, entry, manifest)
