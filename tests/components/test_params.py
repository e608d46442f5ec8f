"""params.yaml is validated as a whole: every problem names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.formats.params import ParamsError, load_params

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
        # The gate's thresholds: tasks of the run, finite numbers in [0, 1].
        ("gate: {min_wilson_low: {Pushcube-v1: 0.9}}\n", "gate.min_wilson_low names ['Pushcube-v1'], which tasks"),
        ("gate: {min_wilson_low: {PushCube-v1: .nan}}\n", "gate.min_wilson_low.PushCube-v1"),
        ("gate: {min_wilson_low: {PushCube-v1: 1.2}}\n", "gate.min_wilson_low.PushCube-v1"),
        ("gate: {min_wilson_low: {PushCube-v1: high}}\n", "gate.min_wilson_low.PushCube-v1"),
        ("gate: {default_min_wilson_low: .inf}\n", "gate.default_min_wilson_low"),
        ("gate: {max_regression: -0.1}\n", "gate.max_regression"),
        ("gate: {max_regression: .nan}\n", "gate.max_regression"),
        ("gate: {min_episodes: 0}\n", "gate.min_episodes"),
        ("gate: {model_name: ''}\n", "gate.model_name"),
        ("validate: {max_saturated_fraction: .nan}\n", "validate.max_saturated_fraction"),
        ("encode: {vae: {kl_weight: .inf}}\n", "encode.vae.kl_weight"),
        ("collect: {camera: {eye: [.nan, 0, 1], target: [0, 0, 0]}}\n", "collect.camera.eye"),
        ("train: {lr: .nan}\n", "train.lr"),
        ("train: {min_lr_ratio: .inf}\n", "train.min_lr_ratio"),
        ("train: {weight_decay: .inf}\n", "train.weight_decay"),
        # Holding video-pretrained weights: in train, and only where there are some.
        ("train: {freeze_pretrained_steps: -1}\n", "train.freeze_pretrained_steps"),
        ("pretrain: {freeze_pretrained_steps: 5}\n", "pretrain.freeze_pretrained_steps: pretraining has no"),
        ("pretrain: {enabled: false}\ntrain: {freeze_pretrained_steps: 5}\n", "but pretrain.enabled is false"),
        ("model: {kind: bc}\ntrain: {freeze_pretrained_steps: 5}\n", "the baseline has no video pretraining"),
        ("model: {ablation: no_video_pretrain}\ntrain: {freeze_pretrained_steps: 5}\n", "ablation is no_video"),
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


# The Panda's joint positions and pd_joint_pos actions (7 joints + gripper).
PANDA_QPOS, ACTION_DIM = 9, 8


# Profiles the suite runs whole (tests/test_dvc.py, tests/dags); the rest are checked below.
RUN_WHOLE_IN_TESTS = {"smoke", "ci-airflow"}


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (ROOT / "profiles").glob("*.yaml") if p.stem not in RUN_WHOLE_IN_TESTS),
    ids=lambda p: p.stem,
)
def test_profiles_build_their_model_as_train_does_and_take_a_training_step(path):
    """What this CPU can check of profiles it cannot run whole (gpu.yaml: `base` on 2x
    latents): the model the train component would build from the profile's data shape
    (the VAE's downsampling of its camera, its proprio, its tasks) computes a finite loss
    and gradients for a batch of two."""
    import torch

    from components.integrations.maniskill import GOAL_DIM
    from components.ml.models import build_model
    from components.ml.vae import build_vae
    from par.model import PAR
    from tests.par.helpers import random_batch

    params = load_params(path)
    camera = params.collect.camera
    with torch.no_grad():  # the latent shape of the profile's own VAE, as encode makes it
        frame = torch.zeros(1, 3, camera.height, camera.width)
        latent_shape = list(build_vae(params.encode.vae, camera.height).encode(frame).latent_dist.mean.shape[1:])
    proprio_dim = sum(PANDA_QPOS if p == "qpos" else GOAL_DIM for p in params.collect.proprio)
    manifest = {"action_dim": ACTION_DIM, "proprio_dim": proprio_dim}
    stats = {"latent_shape": latent_shape, "manifests": dict.fromkeys(params.tasks, manifest)}
    model = build_model(params.model, stats, params.tasks)
    assert model.config.latent_height == latent_shape[1]
    if not isinstance(model, PAR):
        pytest.skip(f"{path.name}: model.kind {params.model.kind}")
    torch.manual_seed(0)
    loss = model(random_batch(model.config, batch=2)).total
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None for g in grads) > 0.9 * len(grads)
