"""params.yaml is validated as a whole: every problem names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.params import ParamsError, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_repository_params_and_profiles_are_valid():
    for path in [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]:
        params = load_params(path)
        assert params.tasks, path


@pytest.mark.parametrize(
    "text, message",
    [
        ("tasks: [PushCube-v1]\ncolect: {}\n", "colect"),
        ("collect: {camera: {widht: 64}}\n", "collect.camera.widht"),
        ("collect: {demos_per_task: -3}\n", "collect.demos_per_task"),
        ("tasks: []\n", "tasks"),
        ("tasks: [PushCube-v1, PushCube-v1]\n", "twice"),
        ("model: {ablation: sideways}\n", "model.ablation"),
        ("train: {lr: fast}\n", "train.lr"),
        ("- just a list\n", "mapping"),
        ("collect: [unclosed\n", "not valid YAML"),
        ("collect: {camera: {eye: [0.4, 0, 0.6]}}\n", "eye and target go together"),
        ("collect: {camera: {eye: [1, 0, 1], target: [1, 0, 1]}}\n", "no direction"),
        ("collect: {camera: {eye: [1, 0], target: [0, 0, 0]}}\n", "collect.camera.eye"),
        ("collect: {camera: {fov: -1}}\n", "collect.camera.fov"),
        ("collect: {camera: {hand_camera: true}}\n", "hand_camera needs robot_uids: panda_wristcam"),
        ("collect: {proprio: [qpos, qpos]}\n", "collect.proprio"),
        ("collect: {proprio: [qpos, joint_torques]}\n", "collect.proprio"),
        ("collect: {proprio: []}\n", "at least one part"),
        ("collect: {demos_by_task: {PushCube-v1: 0}}\n", "collect.demos_by_task.PushCube-v1"),
        ("collect: {demos_by_task: {StackCube-v1: 600}}\n", "names ['StackCube-v1'], which tasks"),
        ("collect: {camera_by_task: {PickCube-v1: {eye: [0.3, 0, 0.4], target: [0, 0, 0]}}}\n", "camera_by_task names"),
        ("collect: {camera_by_task: {PushCube-v1: {eye: [0, 0, 1]}}}\n", "collect.camera_by_task.PushCube-v1.target"),
        ("collect: {camera_by_task: {PushCube-v1: {eye: [1, 0, 1], target: [1, 0, 1]}}}\n", "no direction"),
        ("collect: {camera_by_task: {PushCube-v1: {eye: [1, 0, 1], target: [0, 0, 0], width: 9}}}\n", "v1.width"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, message):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=message.replace(".", r"\.").replace("[", r"\[")):
        load_params(path)


def test_missing_params_file(tmp_path):
    with pytest.raises(ParamsError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_are_validated_too(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("tasks: [PushCube-v1]\n")
    assert load_params(path, {"collect.workers": 3}).collect.workers == 3
    with pytest.raises(ParamsError, match=r"collect\.workers"):
        load_params(path, {"collect.workers": 0})


def test_demos_by_task_overrides_demos_per_task(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "tasks: [PushCube-v1, StackCube-v1]\ncollect: {demos_per_task: 150, demos_by_task: {StackCube-v1: 600}}\n"
    )
    collect = load_params(path).collect
    assert collect.demos_for("PushCube-v1") == 150 and collect.demos_for("StackCube-v1") == 600


def test_camera_by_task_moves_that_task_only_and_keeps_the_frame(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "tasks: [PushCube-v1, PickCube-v1]\n"
        "collect: {camera: {width: 48, height: 48, eye: [0.45, 0, 0.6], target: [0.05, 0, 0], fov: 0.9},\n"
        "          camera_by_task: {PickCube-v1: {eye: [0.3, 0, 0.4], target: [0, 0, 0.02]}}}\n"
    )
    collect = load_params(path).collect
    assert collect.camera_for("PushCube-v1") == collect.camera
    pick = collect.camera_for("PickCube-v1")
    assert (pick.eye, pick.target) == ((0.3, 0.0, 0.4), (0.0, 0.0, 0.02))
    assert (pick.width, pick.height, pick.shader, pick.fov) == (48, 48, "minimal", 0.9)  # fov: not given, kept
