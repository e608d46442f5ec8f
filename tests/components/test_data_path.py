"""End to end on real ManiSkill: collect -> validate -> encode (the CI data path)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from components.formats.params import load_params
from components.ml.vae import hard_pixel_error
from components.validate import validate
from tests.cli import run_module
from tests.components.conftest import TASKS


def test_collect_writes_episodes_and_manifest(demos):
    for task in TASKS:
        manifest = json.loads((demos / task / "manifest.json").read_text())
        assert manifest["task"] == task and manifest["control_mode"] == "pd_joint_pos"
        assert not [key for key in manifest if "seconds" in key], "timing would change the data's hash every run"
        assert manifest["counts"]["episodes"] == 2 and len(manifest["seeds"]) == 2
        camera = {"name": "base_camera", "width": 64, "height": 64, "shader": "minimal"}
        sensor = manifest["env_kwargs"]["sensor_configs"]["base_camera"]
        if task == "StackCube-v1":  # the smoke profile's camera_by_task: its own view, same frame
            camera |= {"eye": [0.3, 0.0, 0.4], "target": [0.0, 0.0, 0.02], "fov": 0.7}
            assert len(sensor["pose"]) == 7 and sensor["fov"] == 0.7
        else:
            assert "pose" not in sensor
        assert manifest["camera"] == camera and manifest["frame_shape"] == [64, 64, 3]
        assert sensor["shader_pack"] == "minimal"
        assert set(manifest["versions"]) == {"mani_skill", "sapien"}
        assert len(manifest["action_min"]) == manifest["action_dim"] == 8
        for entry in manifest["episodes"]:
            with np.load(demos / task / entry["file"]) as data:
                T = entry["steps"]
                assert data["frames"].shape == (T + 1, 64, 64, 3) and data["frames"].dtype == np.uint8
                assert data["actions"].shape == (T, 8) and data["proprio"].shape == (T + 1, 12)
                assert data["success"][-1] and int(data["seed"]) == entry["seed"]
                assert np.isfinite(data["actions"]).all()
                # The goal slot: PickCube's goal is hidden from the camera, so the state
                # carries it (constant over the episode); goals in view are zeros.
                goal = data["proprio"][:, 9:]
                if task == "PickCube-v1":
                    assert np.abs(goal).sum() > 0 and np.allclose(goal, goal[0])
                else:
                    assert not goal.any()


def test_replaying_a_demo_reproduces_its_success(demos):
    """The recorded actions, replayed from the recorded seed, succeed again (and random ones do not)."""
    from components.integrations.maniskill import make_env, scalar

    manifest = json.loads((demos / "PushCube-v1" / "manifest.json").read_text())
    entry = manifest["episodes"][0]
    env = make_env("PushCube-v1", manifest["env_kwargs"])
    try:
        with np.load(demos / "PushCube-v1" / entry["file"]) as data:
            actions = data["actions"]
        env.reset(seed=entry["seed"])
        replayed = [bool(scalar(env.step(a)[4]["success"])) for a in actions]
        env.reset(seed=entry["seed"])
        rng = np.random.default_rng(0)
        low, high = env.action_space.low, env.action_space.high
        random = [bool(scalar(env.step(rng.uniform(low, high))[4]["success"])) for _ in actions]
    finally:
        env.close()
    assert replayed[-1] and not any(random)


def test_validate_then_encode(demos, encoded, smoke_params, tmp_path):
    """Validation of one task's demos (each task's is the same suite: the dvc and Airflow
    pipelines validate all three), then the session's encoding of every task."""
    params = load_params(smoke_params)
    summary = validate(demos / TASKS[0], params.validate_params, params.collect, tmp_path / "validation")
    assert summary["success"] and summary["episodes"] == 2
    assert (tmp_path / "validation" / "data_docs" / "index.html").is_file()
    metrics = json.loads((encoded.parent / "m.json").read_text())
    stats = json.loads((encoded / "stats.json").read_text())
    assert stats["latent_shape"] == [4, 16, 16] and stats["tasks"] == TASKS
    assert metrics["recon_psnr"] > 5 and 0 < metrics["recon_ssim"] <= 1
    assert (encoded.parent / "r.png").stat().st_size > 0
    assert (encoded / "vae" / "config.json").is_file()
    for task in TASKS:
        with np.load(encoded / "latents" / f"{task}.npz") as data:
            offsets = data["frame_offsets"]
            assert data["latents"].shape == (offsets[-1], 4, 16, 16)
            assert data["holdout"].tolist() == [False, True]
            assert len(data["actions"]) == data["action_offsets"][-1]
            assert np.isfinite(data["latents"]).all()


def test_hard_pixel_error_is_the_mean_of_each_frames_worst_pixels():
    err = torch.zeros(2, 100)
    err[0, :3] = torch.tensor([9.0, 6.0, 3.0])  # a small object the VAE misses
    err[1] = 1.0  # an evenly blurred frame
    assert hard_pixel_error(err, 0.02).item() == pytest.approx((9 + 6 + 1 + 1) / 4)
    assert hard_pixel_error(err, 1.0).item() == pytest.approx(err.mean().item())


def test_killed_collection_leaves_no_dataset(tmp_path, smoke_params, simulator):
    """SIGKILL in the middle of a collection: the output folder never appears half-written."""
    out = tmp_path / "PushCube-v1"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "components.collect",
            "--params",
            str(smoke_params),
            "--task",
            "PushCube-v1",
            "--out",
            str(out),
            "--demos",
            "3",
            "--no-progress",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(tmp_path.glob(".PushCube-v1.tmp-*/episodes/*.npz")):
            assert proc.poll() is None, "collection ended before it could be killed"
            time.sleep(0.2)
        assert list(tmp_path.glob(".PushCube-v1.tmp-*/episodes/*.npz")), "no episode was written in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()


def test_a_demo_depends_on_its_seed_alone(demos, smoke_params, tmp_path):
    """The fixture planned PickCube's second demo after its first in one env; planned
    first in a fresh env it is the same bit for bit (a plain reset keeps some of what
    the earlier plan left behind: without the rebuilt scene the two differ, and a
    pool's scheduling would decide the data)."""
    from components.collect import collect_task

    manifest = json.loads((demos / "PickCube-v1" / "manifest.json").read_text())
    second = manifest["episodes"][1]
    params = load_params(smoke_params, {"collect.demos_per_task": 1, "collect.seed_start": second["seed"]})
    alone = collect_task("PickCube-v1", params.collect, tmp_path / "alone", progress=False)
    assert alone["seeds"] == [second["seed"]]
    with (
        np.load(demos / "PickCube-v1" / second["file"]) as after,
        np.load(tmp_path / "alone" / alone["episodes"][0]["file"]) as first,
    ):
        for key in ("frames", "actions", "proprio", "success"):
            assert np.array_equal(after[key], first[key]), key


def test_plans_longer_than_validation_allows_are_retried_then_named(tmp_path, smoke_params, simulator):
    """A successful plan over validate.max_episode_steps counts as a failed attempt (here
    every PushCube plan is over a bound of 5): collect fails naming why, writes nothing."""
    from components.collect import collect_task
    from components.errors import ComponentError

    params = load_params(smoke_params, {"collect.demos_per_task": 1, "collect.max_attempts_per_demo": 2})
    with pytest.raises(ComponentError, match=r"only 0 of 1 demos .* failed: 2 plan too long"):
        collect_task("PushCube-v1", params.collect, tmp_path / "out", progress=False, max_steps=5)
    assert not (tmp_path / "out").exists()


def test_task_without_planner_is_a_clear_error(tmp_path, smoke_params):
    args = ["--params", str(smoke_params), "--task", "OpenCabinetDrawer-v1", "--out", str(tmp_path / "x")]
    result = run_module("components.collect", *args)
    assert result.returncode == 2
    assert "has no motion-planning solution" in result.stderr and "OpenCabinetDrawer-v1" in result.stderr
    assert not (tmp_path / "x").exists()


def test_task_needing_asset_download_is_a_clear_error(simulator):
    """Offline, a task whose assets are absent fails with a message naming the task, not a traceback."""
    from components.errors import ComponentError
    from components.formats.params import CameraParams
    from components.integrations.maniskill import env_kwargs, make_env

    with pytest.raises(ComponentError, match="PickSingleYCB-v1 needs assets"):
        make_env("PickSingleYCB-v1", env_kwargs("pd_joint_pos", CameraParams(), "panda", "physx_cpu", 50))


def test_camera_pose_from_params_changes_the_view(simulator):
    """The profile's eye/target/fov reach the simulator: the pose survives JSON (manifest,
    policy), and the frame changes."""
    import json

    import numpy as np

    from components.formats.params import CameraParams
    from components.integrations.maniskill import env_kwargs, frame_of, make_env

    default, close = CameraParams(), CameraParams(eye=(0.45, 0.0, 0.6), target=(0.05, 0.0, 0.0), fov=0.9)
    frames = []
    for camera in (default, close):
        kwargs = json.loads(json.dumps(env_kwargs("pd_joint_pos", camera, "panda", "physx_cpu", 50)))
        env = make_env("PushCube-v1", kwargs)
        try:
            obs, _ = env.reset(seed=0)
            frames.append(frame_of(obs, "base_camera").astype(np.float32))
        finally:
            env.close()
    assert frames[0].shape == frames[1].shape == (64, 64, 3)
    assert np.abs(frames[0] - frames[1]).mean() > 10.0
    # The closer view gives the blue cube more pixels.
    blue = [int(((f[..., 2] > 120) & (f[..., 0] < 80) & (f[..., 1] < 110)).sum()) for f in frames]
    assert blue[1] >= 2 * blue[0] > 0, blue


def test_hand_camera_is_tiled_beside_the_base_camera(simulator):
    """camera.hand_camera renders panda_wristcam's hand camera at the same size and puts
    it right of the base view; the manifest entry names it so evaluation tiles the same."""
    import json

    import numpy as np

    from components.formats.params import CameraParams
    from components.integrations.maniskill import camera_names, env_kwargs, frame_of, make_env

    camera = CameraParams(hand_camera=True)
    assert camera_names(camera.manifest()) == ["base_camera", "hand_camera"]
    assert camera_names(CameraParams().manifest()) == ["base_camera"]
    assert "hand_camera" not in CameraParams().manifest()  # older manifests stay equal
    kwargs = json.loads(json.dumps(env_kwargs("pd_joint_pos", camera, "panda_wristcam", "physx_cpu", 50)))
    env = make_env("PickCube-v1", kwargs)
    try:
        obs, _ = env.reset(seed=0)
        frame = frame_of(obs, camera_names(camera.manifest()))
        base = frame_of(obs, "base_camera")
    finally:
        env.close()
    assert frame.shape == (64, 128, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[:, :64], base)
    # The right half is another view: the hand camera looking down past the fingers.
    assert np.abs(frame[:, 64:].astype(np.float32) - base).mean() > 10.0


def test_show_goal_puts_the_hidden_goal_in_the_frames(simulator):
    """camera.show_goal: PickCube's goal sphere, hidden from cameras by ManiSkill, is in
    every frame of every episode (ManiSkill lists it anew each time it builds a scene);
    the switch rides in env_kwargs, so evaluation rebuilds the same view."""
    import json

    from components.formats.params import CameraParams
    from components.integrations.maniskill import SHOW_GOAL, env_kwargs, frame_of, make_env

    def green(frame: np.ndarray) -> int:
        return int(((frame[..., 1] > 120) & (frame[..., 0] < 100) & (frame[..., 2] < 100)).sum())

    frames = {}
    for show in (False, True):
        camera = CameraParams(eye=(0.45, 0.0, 0.6), target=(0.05, 0.0, 0.0), fov=0.9, show_goal=show)
        assert ("show_goal" in camera.manifest()) is show  # older manifests stay equal
        kwargs = json.loads(json.dumps(env_kwargs("pd_joint_pos", camera, "panda", "physx_cpu", 50)))
        assert kwargs.get(SHOW_GOAL, False) is show
        env = make_env("PickCube-v1", kwargs)
        try:
            for seed in (0, 1) if show else (0,):  # the second reset builds the scene again
                obs, _ = env.reset(seed=seed, options={"reconfigure": True})
                frames[show, seed] = frame_of(obs, "base_camera")
        finally:
            env.close()
    assert green(frames[False, 0]) == 0
    assert min(green(frames[True, 0]), green(frames[True, 1])) >= 5
    # Nothing else changes: the goal's pixels are the difference.
    changed = (frames[True, 0] != frames[False, 0]).any(axis=-1).sum()
    assert changed <= 3 * green(frames[True, 0]), (changed, green(frames[True, 0]))


def test_proprio_parts_in_the_order_params_name_them(simulator):
    """qpos, the hidden goal, and the goal relative to the gripper; zeros where a task has
    no hidden goal (PushCube), so one multi-task model reads every task."""
    import numpy as np

    from components.formats.params import CameraParams
    from components.integrations.maniskill import env_kwargs, make_env, proprio_of

    parts = ["qpos", "goal_pos", "tcp_to_goal"]
    for task in ("PickCube-v1", "PushCube-v1"):
        env = make_env(task, env_kwargs("pd_joint_pos", CameraParams(), "panda", "physx_cpu", 50))
        try:
            obs, _ = env.reset(seed=0)
            tcp = env.unwrapped.agent.tcp.pose.p[0].numpy()
            goal = obs["extra"].get("goal_pos")
        finally:
            env.close()
        full, default = proprio_of(obs, parts), proprio_of(obs)
        assert full.shape == (15,) and default.shape == (12,)
        np.testing.assert_array_equal(full[:12], default)
        np.testing.assert_array_equal(proprio_of(obs, ["tcp_to_goal", "qpos"])[3:], full[:9])
        if goal is None:
            assert not full[9:].any(), task
        else:
            np.testing.assert_allclose(full[9:12], goal[0].numpy())
            np.testing.assert_allclose(full[12:], goal[0].numpy() - tcp, atol=1e-6)
            assert np.abs(full[12:]).max() > 0.01
