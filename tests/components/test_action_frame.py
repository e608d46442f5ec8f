"""The action frames of a policy: absolute joint targets, or offsets from the joints."""

from __future__ import annotations

import numpy as np
import pytest

from components.common import ComponentError
from components.policy import ActionCodec, Normalizer, relative_action_range, relative_reference_index


def _manifest(**overrides) -> dict:
    return {
        "task": "PickCube-v1",
        "control_mode": "pd_joint_pos",
        "proprio": ["qpos", "goal_pos"],
        "action_dim": 8,
    } | overrides


def test_relative_frame_maps_the_arm_joints_to_qpos_and_keeps_the_gripper_absolute():
    assert relative_reference_index([_manifest()]) == [0, 1, 2, 3, 4, 5, 6, None]


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (_manifest(control_mode="pd_ee_delta_pos"), "pd_joint_pos.*'pd_ee_delta_pos'"),
        (_manifest(proprio=["goal_pos", "qpos"]), "must start with qpos.*PickCube-v1"),
    ],
)
def test_relative_frame_refuses_data_it_cannot_reference(manifest, message):
    with pytest.raises(ComponentError, match=message):
        relative_reference_index([manifest])


def test_relative_codec_round_trips_and_encodes_offsets_from_the_measured_joints():
    index = [0, None]
    codec = ActionCodec(Normalizer.min_max([-0.1, 0.0], [0.1, 0.04]), index)
    qpos = np.array([1.5, 0.02, 7.0], np.float32)  # joint, finger, something else
    chunk = np.array([[1.5, 0.04], [1.6, 0.0], [1.4, 0.02]], np.float32)
    encoded = codec.encode(chunk, qpos)
    # Joint 0: offsets 0, +0.1, -0.1 of a +-0.1 range; the gripper: its absolute range.
    np.testing.assert_allclose(encoded, [[0.0, 1.0], [1.0, -1.0], [-1.0, 0.0]], atol=1e-6)
    np.testing.assert_allclose(codec.decode(encoded, qpos), chunk, atol=1e-6)
    # The same chunk seen from other joints decodes around them.
    np.testing.assert_allclose(
        codec.decode(encoded, qpos + np.float32([0.5, 0, 0]))[:, 0], chunk[:, 0] + 0.5, atol=1e-6
    )
    with pytest.raises(ComponentError, match="needs the proprio"):
        codec.decode(encoded)


def test_episode_arrays_give_what_the_sampler_subtracts():
    codec = ActionCodec(Normalizer.min_max([-0.2, -1.0], [0.2, 1.0]), [0, None])
    actions = np.array([[0.1, 1.0], [0.3, -1.0]], np.float32)
    proprio = np.array([[0.0, 5.0], [0.2, 5.0], [0.3, 5.0]], np.float32)
    chunks, reference = codec.episode_arrays(actions, proprio)
    # The chunk from frame 1: actions 1 relative to proprio 1, as encode() gives it.
    np.testing.assert_allclose(chunks[1] - reference[1], codec.encode(actions[1:2], proprio[1])[0], atol=1e-6)
    absolute = ActionCodec(codec.norm)
    chunks, reference = absolute.episode_arrays(actions, proprio)
    assert reference is None and np.allclose(chunks, absolute.encode(actions))


def test_relative_range_covers_every_chunk_start_and_the_held_last_action():
    actions = np.array([[1.0], [2.0], [4.0]], np.float32)
    proprio = np.array([[1.0], [1.5], [3.0], [4.0]], np.float32)
    low, high = relative_action_range(actions, proprio, chunk_len=2, index=[0])
    # Starts 0, 1, 2 with offsets {0, 1}, {0.5, 2.5}, {1, 1 (held)}.
    assert low.tolist() == [0.0] and high.tolist() == [2.5]
