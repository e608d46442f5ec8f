"""validate: every kind of bad data is caught, named, and stops the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli import Completed, run_module


def _rewrite(dataset: Path, episode: int, **changes) -> None:
    path = dataset / "episodes" / f"episode_{episode:05d}.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    np.savez_compressed(path, **arrays)


def _arrays(dataset: Path, episode: int) -> dict:
    with np.load(dataset / "episodes" / f"episode_{episode:05d}.npz") as data:
        return {k: data[k] for k in data.files}


def _run(dataset: Path, params: Path, out: Path) -> Completed:
    return run_module("components.validate", "--params", str(params), "--dataset", str(dataset), "--out", str(out))


def nan_action(ds):
    actions = _arrays(ds, 1)["actions"].copy()
    actions[3, 2] = np.nan
    _rewrite(ds, 1, actions=actions)


def wrong_frame_shape(ds):
    _rewrite(ds, 0, frames=_arrays(ds, 0)["frames"][:, :32])


def truncated_episode(ds):
    a = _arrays(ds, 1)
    _rewrite(ds, 1, frames=a["frames"][:-5])


def missing_file(ds):
    (ds / "episodes" / "episode_00001.npz").unlink()


def mismatched_control_mode(ds):
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["control_mode"] = "pd_ee_delta_pose"
    (ds / "manifest.json").write_text(json.dumps(manifest))


def failed_episode(ds):
    a = _arrays(ds, 0)
    _rewrite(ds, 0, success=np.zeros_like(a["success"]))


def action_out_of_bounds(ds):
    actions = _arrays(ds, 0)["actions"].copy()
    actions[0, 0] = 100.0
    _rewrite(ds, 0, actions=actions)


def duplicate_seed(ds):
    _rewrite(ds, 1, seed=_arrays(ds, 0)["seed"])
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["episodes"][1]["seed"] = manifest["episodes"][0]["seed"]
    (ds / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "plant, expected",
    [
        (nan_action, ["nonfinite_actions", "episodes [1]"]),
        (wrong_frame_shape, ["frame_height", "episodes [0]"]),
        (truncated_episode, ["frames_match_steps", "episodes [1]"]),
        (missing_file, ["episode 1 file", "is missing"]),
        (mismatched_control_mode, ["control_mode 'pd_ee_delta_pose' differs"]),
        (failed_episode, ["final_success", "episodes [0]"]),
        (action_out_of_bounds, ["actions_in_bounds", "episodes [0]"]),
        (duplicate_seed, ["expect_column_values_to_be_unique", "column seed"]),
    ],
)
def test_bad_data_is_named_and_stops(push_copy, smoke_params, tmp_path, plant, expected):
    plant(push_copy)
    out = tmp_path / "validation"
    result = _run(push_copy, smoke_params, out)
    assert result.returncode == 1, result.stderr
    for text in expected:
        assert text in result.stderr, f"{text!r} not in:\n{result.stderr}"
    report = json.loads((out / "results.json").read_text())
    assert report["success"] is False
    assert (out / "data_docs" / "index.html").is_file()


def test_encode_refuses_data_that_failed_validation(push_copy, smoke_params, tmp_path):
    failed_episode(push_copy)
    assert _run(push_copy, smoke_params, tmp_path / "validation" / push_copy.name).returncode == 1
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "components.encode",
            "--params",
            str(smoke_params),
            "--demos",
            str(push_copy),
            "--validation-root",
            str(tmp_path / "validation"),
            "--out",
            str(tmp_path / "enc"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--plot",
            str(tmp_path / "p.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "failed validation" in result.stderr
    assert not (tmp_path / "enc").exists()


def test_a_rerun_on_the_same_data_leaves_the_results_byte_for_byte(push_copy, smoke_params, tmp_path):
    """The data docs (a run time, fresh ids) go to --docs, so the results folder that
    encode depends on is the same after a rerun and DVC need not retrain the VAE."""
    runs = []
    for name in ("first", "second"):
        out, docs = tmp_path / name, tmp_path / f"{name}_docs"
        result = run_module(
            "components.validate", "--params", str(smoke_params), "--dataset", str(push_copy),
            "--out", str(out), "--docs", str(docs),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert (docs / "index.html").is_file() and not (out / "data_docs").exists()
        runs.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert list(runs[0]) == [Path("results.json")] and runs[0] == runs[1]
