"""ManiSkill environments, built the same way for collection and evaluation.

The exact ``gym.make`` keyword arguments are written into each dataset's manifest,
and evaluation rebuilds its environment from them: same camera size and shader,
same control mode, same robot, same simulation backend.
"""

from __future__ import annotations

import gc
import logging
import os
import urllib.error
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from components.errors import ComponentError
from components.formats.params import DEFAULT_PROPRIO, CameraParams

REPO = Path(__file__).resolve().parents[2]
# ManiSkill logs through a logger of this name (with a trailing space), at INFO, with a
# handler of its own; "no CUDA device, rendering on the CPU" is expected on this machine.
MANISKILL_LOGGER = "mani_skill "


def use_software_vulkan() -> None:
    """Point Vulkan at the project's lavapipe driver (``make setup`` unpacks it into
    ``.vulkan/``) unless the caller chose one."""
    icd = REPO / ".vulkan" / "lvp_icd.json"
    if "VK_ICD_FILENAMES" not in os.environ and icd.is_file():
        os.environ["VK_ICD_FILENAMES"] = str(icd)
    os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
    # SAPIEN falls back to its bundled Vulkan loader, and ManiSkill to CPU rendering,
    # as intended on a machine without a GPU: keep those two notices out of the logs.
    warnings.filterwarnings("ignore", message="Failed to find system libvulkan")
    logging.getLogger(MANISKILL_LOGGER).setLevel(logging.ERROR)


# The project's own key in a manifest's env_kwargs (make_env takes it out before gym.make):
# the cameras see the goal markers the task hides from them.
SHOW_GOAL = "show_goal"


def env_kwargs(
    control_mode: str, camera: CameraParams, robot_uids: str, sim_backend: str, max_episode_steps: int
) -> dict[str, Any]:
    return {
        "obs_mode": "rgb",
        "control_mode": control_mode,
        "robot_uids": robot_uids,
        "sim_backend": sim_backend,
        "render_mode": "rgb_array",
        "max_episode_steps": max_episode_steps,
        "sensor_configs": sensor_configs(camera),
        "human_render_camera_configs": {"shader_pack": camera.shader},
    } | ({SHOW_GOAL: True} if camera.show_goal else {})


HAND_CAMERA = "hand_camera"  # the camera panda_wristcam carries on its gripper


def sensor_configs(camera: CameraParams) -> dict[str, Any]:
    """ManiSkill ``sensor_configs`` for every camera a frame is made of."""
    configs = {camera.name: sensor_config(camera)}
    if camera.hand_camera:  # same size and shader; its pose is the robot's
        configs[HAND_CAMERA] = {"width": camera.width, "height": camera.height, "shader_pack": camera.shader}
    return configs


def camera_names(camera: dict[str, Any]) -> list[str]:
    """The sensors a frame is tiled from, left to right, given a manifest's ``camera``
    (older manifests have no ``hand_camera`` key: one camera)."""
    return [camera["name"]] + ([HAND_CAMERA] if camera.get("hand_camera") else [])


def frame_shape(camera: CameraParams) -> list[int]:
    """[H, W, 3] of a frame: the cameras' images side by side."""
    return [camera.height, camera.width * len(camera_names(camera.manifest())), 3]


def sensor_config(camera: CameraParams) -> dict[str, Any]:
    """ManiSkill ``sensor_configs`` entry for the camera, JSON-serialisable (it is stored
    in the dataset manifest and the policy so that evaluation renders the same view)."""
    config: dict[str, Any] = {"width": camera.width, "height": camera.height, "shader_pack": camera.shader}
    if camera.fov is not None:
        config["fov"] = camera.fov
    if camera.eye is not None and camera.target is not None:
        config["pose"] = look_at_pose(camera.eye, camera.target)
    return config


def look_at_pose(eye: tuple[float, float, float], target: tuple[float, float, float]) -> list[float]:
    """[x, y, z, qw, qx, qy, qz] of a camera at ``eye`` looking at ``target``: ManiSkill's
    own ``look_at`` (what its task cameras use), as a list so that it survives JSON."""
    use_software_vulkan()
    from mani_skill.utils import sapien_utils

    return sapien_utils.look_at(eye=list(eye), target=list(target)).raw_pose[0].tolist()


def make_env(task: str, kwargs: dict[str, Any]):
    """``gym.make(task, **kwargs)`` with a clear error for unknown or offline-only tasks."""
    use_software_vulkan()
    import mani_skill.envs  # noqa: F401 - registers the environments

    logging.getLogger(MANISKILL_LOGGER).setLevel(logging.ERROR)  # set to INFO when ManiSkill is imported

    if task not in gym.registry:
        raise ComponentError(f"unknown ManiSkill task {task!r}")
    kwargs = dict(kwargs)
    show_goal = kwargs.pop(SHOW_GOAL, False)
    try:
        env = gym.make(task, **kwargs)
        return ShowGoal(env) if show_goal else env
    except (FileNotFoundError, urllib.error.URLError) as exc:
        raise ComponentError(
            f"task {task} needs assets that are not on this machine and cannot be downloaded here "
            f"(run `python -m mani_skill.utils.download_asset {task}` where a network is available): {exc}"
        ) from exc
    except RuntimeError as exc:
        if "Vulkan" in str(exc) or "vk::" in str(exc):
            raise ComponentError(
                f"ManiSkill could not render for {task}: {exc}. Run `make setup` to install the "
                "software Vulkan driver, or set VK_ICD_FILENAMES."
            ) from exc
        raise


def freeze_heap() -> None:
    """Collect garbage, then put every object alive out of the collector's sight
    (``gc.freeze``). ManiSkill runs a full ``gc.collect()`` each time it rebuilds a
    scene, and a process holding torch and ManiSkill has ~324,000 objects to walk: 0.15 s
    of a 0.22 s PushCube rebuild here, 0.07 s once frozen (docs/performance.md). Call it once a
    process that rebuilds scenes (evaluation, the planner), after its env is made, and
    :func:`thaw_heap` when the env is closed (what was frozen is never collected)."""
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    """Undo :func:`freeze_heap`: the frozen objects are the collector's again."""
    gc.unfreeze()


class ShowGoal(gym.Wrapper):
    """The task's hidden objects (its goal markers) shown to the cameras. ManiSkill lists
    them anew whenever it builds a scene and hides them before each sensor render; after
    each reset this shows them, empties the list and observes again."""

    def reset(self, **kwargs: Any) -> tuple:
        obs, info = self.env.reset(**kwargs)
        base = self.env.unwrapped
        if base._hidden_objects:
            for obj in base._hidden_objects:
                obj.show_visual()
            base._hidden_objects = []
            obs = base.get_obs()
        return obs, info


def planner_for(task: str):
    from mani_skill.examples.motionplanning.panda.run import MP_SOLUTIONS

    if task not in MP_SOLUTIONS:
        raise ComponentError(
            f"task {task!r} has no motion-planning solution in ManiSkill; choose one of {sorted(MP_SOLUTIONS)}"
        )
    return MP_SOLUTIONS[task]


def step_unobserved(env: Any, action: Any) -> dict:
    """Advance one control step without rendering the observation; return its info.

    ``env.step`` renders every camera at every step, which on a CPU costs ~30x the
    physics (36 ms against 1.3 ms for PushCube at 64x64). A policy that looks only at
    the first frame of each action chunk steps the chunk's other actions through here
    (the same ``_step_action`` and ``get_info`` that ``env.step`` runs) and calls
    ``env.step`` for the last one. Wrappers are bypassed: callers count steps
    themselves, as a fair evaluation with ``ignore_terminations`` does anyway.
    """
    base = env.unwrapped
    base._step_action(action)
    base._elapsed_steps += 1
    return base.get_info()


def frame_of(obs: dict, cameras: str | list[str], env: int = 0) -> np.ndarray:
    """The RGB frame of env ``env`` (the first, only one of a CPU simulation): (H, W, 3)
    uint8 for one camera; for several, their images side by side, (H, n * W, 3)."""
    images = []
    for camera in [cameras] if isinstance(cameras, str) else cameras:
        rgb = obs["sensor_data"][camera]["rgb"]
        images.append(np.asarray(rgb[env].cpu().numpy() if hasattr(rgb, "cpu") else rgb[env], dtype=np.uint8))
    return images[0] if len(images) == 1 else np.concatenate(images, axis=1)


GOAL_DIM = 3


def _env_row(value: Any, env: int = 0) -> np.ndarray:
    return np.asarray(value[env].cpu().numpy() if hasattr(value, "cpu") else value[env], dtype=np.float32)


def proprio_parts(info: dict[str, Any]) -> list[str]:
    """The proprio layout a manifest or a policy's task info records (older ones record
    none: they hold the default)."""
    return list(info.get("proprio", DEFAULT_PROPRIO))


def proprio_of(obs: dict, parts: Sequence[str] = DEFAULT_PROPRIO, env: int = 0) -> np.ndarray:
    """The state vector a policy reads beside the frame (of env ``env``), ``parts`` in order:

    * ``qpos``: the robot's joint positions (9 for the Panda).
    * ``goal_pos``: ManiSkill's ``extra.goal_pos`` where a visual observation carries it:
      the goals the camera cannot see (PickCube's goal site is hidden from cameras, so
      without it the task is a guess). Tasks whose goal is in view (PushCube's target,
      StackCube's second cube) get zeros, so every task has the same size and one
      multi-task model reads them all.
    * ``tcp_to_goal``: that goal minus the gripper's position (``extra.tcp_pose``), zeros
      where there is no goal slot: the error a policy has to drive to zero, instead of
      an absolute point it has to turn into joint angles itself.
    """
    extra = obs.get("extra", {})
    goal = extra.get("goal_pos")
    values = {
        "qpos": lambda: _env_row(obs["agent"]["qpos"], env),
        "goal_pos": lambda: np.zeros(GOAL_DIM, np.float32) if goal is None else _env_row(goal, env),
        "tcp_to_goal": lambda: (
            np.zeros(GOAL_DIM, np.float32)
            if goal is None
            else _env_row(goal, env) - _env_row(extra["tcp_pose"], env)[:3]
        ),
    }
    return np.concatenate([values[part]() for part in parts])


def progress_flags(info: dict, env: int = 0) -> dict[str, bool]:
    """The task's boolean progress flags in a step's info (what its ``evaluate()``
    reports besides success: PickCube's ``is_grasped``, ``is_obj_placed``,
    ``is_robot_static``; StackCube's ``is_cubeA_grasped``, ``is_cubeA_on_cubeB``...):
    where a failed episode stopped."""
    return {
        key: bool(scalar(value, env))
        for key, value in info.items()
        if key not in ("success", "fail")
        and (isinstance(value, bool) or str(getattr(value, "dtype", "")) in ("bool", "torch.bool"))
    }


def scalar(value: Any, env: int = 0) -> float:
    """Env ``env``'s entry of a per-env tensor/array (or a bool) as a Python number."""
    if hasattr(value, "cpu"):
        value = value.cpu().numpy()
    flat = np.asarray(value).reshape(-1)
    return float(flat[env if flat.size > 1 else 0])


def versions() -> dict[str, str]:
    import mani_skill
    import sapien

    return {"mani_skill": mani_skill.__version__, "sapien": sapien.__version__}
