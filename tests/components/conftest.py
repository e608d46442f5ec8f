"""Fixtures with real ManiSkill data, collected once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from components.collect import collect_task
from components.formats.params import drop_tasks, load_params

TASKS = ["PushCube-v1", "PickCube-v1", "StackCube-v1"]

ROOT = Path(__file__).resolve().parents[2]
SMOKE_PROFILE = ROOT / "profiles" / "smoke.yaml"


def write_params(path: Path, **sections) -> Path:
    """The smoke profile with some sections replaced; per-task entries of tasks a
    replaced ``tasks`` leaves out go with them (as the trigger form's do)."""
    data = yaml.safe_load(SMOKE_PROFILE.read_text())
    data.update(sections)
    drop_tasks(data, {t for t in TASKS if t not in data["tasks"]})
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def smoke_params(tmp_path_factory) -> Path:
    return write_params(tmp_path_factory.mktemp("params") / "params.yaml")


@pytest.fixture(scope="session")
def demos(tmp_path_factory, smoke_params, simulator) -> Path:
    """2 real motion-planning demos of each default task at 64x64 (the CI end-to-end data)."""
    root = tmp_path_factory.mktemp("demos")
    params = load_params(smoke_params)
    for task in TASKS:
        collect_task(task, params.collect, root / task, progress=False)
    return root


def nan_action_policy(policy_dir: Path, target: Path) -> Path:
    """A copy of a policy bundle whose action head's weights are NaN (its config kept)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shutil.copytree(policy_dir, target)
    weights = target / "model" / "model.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    state = {k: v * float("nan") if k.startswith("action_head.") else v for k, v in load_file(weights).items()}
    save_file(state, str(weights), metadata=metadata)
    return target


@pytest.fixture
def push_copy(demos, tmp_path) -> Path:
    """A private copy of the PushCube dataset, to corrupt."""
    target = tmp_path / "PushCube-v1"
    shutil.copytree(demos / "PushCube-v1", target)
    return target


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store(tmp_path_factory):
    """Tests track into a throwaway SQLite store, never the repository's."""
    import os

    store = tmp_path_factory.mktemp("mlflow")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["PAR_PIPELINE_KEY"] = "tests"
    yield


# A tiny action-free corpus: one planner clip of two tasks the smoke run does not train,
# and one video file of the user's (clips cut at 40 frames, to keep encoding quick).
CORPUS_SOURCES = {
    "other-tasks": {"kind": "maniskill", "tasks": ["PullCube-v1", "PlaceSphere-v1"], "clips_per_task": 1},
    "mine": {"kind": "folder", "fps": 10},
}
CORPUS_VIDEOS = {"sources": CORPUS_SOURCES, "max_frames": 40, "workers": 1}


def moving_square_video(path: Path, frames: int = 30, fps: int = 15, size: tuple[int, int] = (96, 128)) -> Path:
    """A video file (any format imageio writes by its suffix) of a square crossing a
    grey background: moving, not blank."""
    import imageio.v2 as imageio
    import numpy as np

    h, w = size
    video = np.full((frames, h, w, 3), 90, np.uint8)
    for i in range(frames):
        x = int(i * (w - 20) / max(frames - 1, 1))
        video[i, h // 2 - 10 : h // 2 + 10, x : x + 20] = (220, 40, 40)
    if path.suffix == ".gif":
        imageio.mimsave(path, list(video), duration=1000 / fps, loop=0)
    else:
        codec = {".webm": "libvpx-vp9"}.get(path.suffix, "libx264")
        imageio.mimsave(path, list(video), fps=fps, macro_block_size=1, codec=codec)
    return path


@pytest.fixture(scope="session")
def user_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user_videos")
    moving_square_video(folder / "square.mp4")
    return folder


@pytest.fixture(scope="session")
def corpus_params(tmp_path_factory) -> Path:
    return write_params(tmp_path_factory.mktemp("corpus_params") / "params.yaml", videos=CORPUS_VIDEOS)


@pytest.fixture(scope="session")
def corpus(corpus_params, user_videos, tmp_path_factory, simulator) -> Path:
    from components.videos import build_corpus

    out = tmp_path_factory.mktemp("corpus") / "videos"
    build_corpus(load_params(corpus_params), user_videos, out, progress=False)
    return out


@pytest.fixture(scope="session")
def encoded(demos, corpus, smoke_params, tmp_path_factory) -> Path:
    """The smoke demos and the tiny corpus, encoded (the corpus's frames train the VAE too)."""
    from components.encode import encode

    root = tmp_path_factory.mktemp("encoded")
    params = load_params(smoke_params)
    datasets = [demos / t for t in TASKS]
    encode(datasets, params.encode, root / "encoded", root / "m.json", root / "r.png", progress=False, videos=corpus)
    return root / "encoded"


@pytest.fixture(scope="session")
def pretrained(encoded, smoke_params, tmp_path_factory) -> Path:
    from components.ml.fit import FitPaths, fit

    tmp = tmp_path_factory.mktemp("pretrain")
    params = load_params(smoke_params)
    fit(
        "pretrain",
        params,
        smoke_params,
        FitPaths(encoded, tmp / "pretrained", tmp / "ckpt", tmp / "m.json", tmp / "plots"),
    )
    assert (tmp / "pretrained" / "model" / "model.safetensors").is_file()
    assert (tmp / "ckpt" / "last" / "training_state.pt").is_file()
    return tmp / "pretrained"


@pytest.fixture(scope="session")
def policy_dir(encoded, pretrained, smoke_params, tmp_path_factory) -> Path:
    """A (barely trained) smoke policy: enough to drive the simulator end to end."""
    from components.ml.fit import FitPaths, fit

    tmp = tmp_path_factory.mktemp("policy")
    params = load_params(smoke_params)
    paths = FitPaths(encoded, tmp / "policy", tmp / "ckpt", tmp / "m.json", tmp / "plots", pretrained)
    fit("train", params, smoke_params, paths)
    return tmp / "policy"
