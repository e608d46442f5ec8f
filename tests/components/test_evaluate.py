"""evaluate: closed-loop rollouts in ManiSkill, shards, and the failure modes."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from contextlib import closing

import gymnasium as gym
import numpy as np
import pytest
import torch

from components.evaluate import (
    chunk_env_spec,
    evaluate,
    evaluate_sharded,
    merge,
    protocol_seeds,
    run_wave,
    shard_plan,
)
from components.formats.params import EvaluateParams, load_params
from components.formats.policy import bundle_sha256, load_policy
from components.integrations.chunk_env import NON_FINITE, ChunkEnv, vector_env
from components.ml.metrics import wilson_interval
from tests.cli import run_module
from tests.components.conftest import nan_action_policy


def test_closed_loop_evaluation_writes_rows_metrics_and_video_and_its_shards_agree(
    policy_dir, smoke_params, demos, tmp_path
):
    """One process evaluating every seed writes rows, metrics and a video; with
    ``evaluate.shards`` worker processes, merged, the same episodes, outcomes and videos."""
    params = load_params(smoke_params)
    manifest = json.loads((demos / "PushCube-v1" / "manifest.json").read_text())
    threads = torch.get_num_threads()
    try:  # a shard worker beside others takes its share of the cores
        one_thread = params.evaluate.model_copy(update={"threads": 1})
        policy = load_policy(policy_dir)
        serial = evaluate(policy, "PushCube-v1", one_thread, tmp_path / "serial", manifest=manifest, progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((tmp_path / "serial" / "episodes.json").read_text())
    assert [r["seed"] for r in rows] == [1_000_000, 1_000_001]
    # terminations ignored: every episode runs max steps
    assert all(r["steps"] == params.evaluate.max_episode_steps["PushCube-v1"] for r in rows)
    assert serial["episodes"] == 2 and 0 <= serial["wilson_low"] <= serial["success_once"] <= serial["wilson_high"]
    assert len(list((tmp_path / "serial" / "videos").glob("*.mp4"))) == 1
    assert serial["policy_sha256"] == bundle_sha256(policy_dir)  # which policy this is evidence of

    sharded_params = params.evaluate.model_copy(update={"shards": 2})
    sharded = evaluate_sharded(str(policy_dir), "PushCube-v1", sharded_params, tmp_path / "sharded", None, False)
    assert sharded["episodes"] == 2 and sharded["seeds"] == [1_000_000, 1_000_001]
    keep = ("seed", "policy_seed", "success_once", "success_at_end", "steps", "failure", "reached")
    rows = [json.loads((tmp_path / f / "episodes.json").read_text()) for f in ("serial", "sharded")]
    assert [{k: r[k] for k in keep} for r in rows[0]] == [{k: r[k] for k in keep} for r in rows[1]]
    assert len(list((tmp_path / "sharded" / "videos").glob("*.mp4"))) == params.evaluate.videos == 1
    with pytest.raises(Exception, match="overlap"):
        merge([tmp_path / "serial", tmp_path / "serial"], tmp_path / "dup")


def test_a_batch_of_envs_steps_each_episode_as_it_runs_alone(policy_dir, smoke_params):
    """``evaluate.num_envs``: 2 episodes in 2 worker envs, one batched policy call a
    decision, end in the same simulation state, to the last bit, as each alone, one
    after another in one env (the first one recorded: its frames too). The GPU path's
    GpuChunkEnvs (one ManiSkill simulation of N envs) cannot run N > 1 here without a
    GPU; with the CPU simulation's single env its code gives the first episode too."""
    from components.integrations.chunk_env import GpuChunkEnvs

    params = load_params(smoke_params).evaluate
    policy = load_policy(policy_dir)
    spec = chunk_env_spec(policy, "PushCube-v1", policy.task_info("PushCube-v1"), max_steps=40)
    pairs, record = [(1_000_000 + k, 1_000_000 + k) for k in range(2)], [True, False]
    with closing(vector_env(spec, 2)) as envs:
        batched = run_wave(policy, envs, 0, pairs, record, params)
        states = list(envs.call("state"))
    with closing(vector_env(spec, 1)) as env:  # one env, episode after episode: the scene is rebuilt each time
        alone, alone_states = [], []
        for pair, keep in zip(pairs, record, strict=True):
            alone += run_wave(policy, env, 0, [pair], [keep], params)
            alone_states += env.call("state")
    with closing(GpuChunkEnvs(spec, 1, sim_backend="physx_cpu")) as envs:
        (one_sim,) = run_wave(policy, envs, 0, pairs[:1], [True], params)
    assert all(np.array_equal(a, b) for a, b in zip(states, alone_states, strict=True))  # to the last bit
    assert not np.array_equal(*alone_states)  # the seeds differ: the test can fail
    frames = batched[0].pop("frames")
    assert frames.shape == (41, 64, 64, 3) and np.array_equal(frames, alone[0].pop("frames"))
    assert np.array_equal(frames, one_sim.pop("frames"))
    for together, by_itself in zip(batched, alone, strict=True):
        assert together.pop("policy_seconds") >= 0 and by_itself.pop("policy_seconds") >= 0
        assert together == by_itself and together["steps"] == 40
    one_sim.pop("policy_seconds")
    assert one_sim == batched[0]
    assert [r["seed"] for r in batched] == [s for s, _ in pairs]


def test_an_episode_that_ends_early_leaves_the_batch_stepping(policy_dir):
    """A non-finite chunk ends that env's episode (failure recorded, nothing stepped);
    its later steps are no-ops while the other env goes on."""
    policy = load_policy(policy_dir)
    spec = chunk_env_spec(policy, "PushCube-v1", policy.task_info("PushCube-v1"), max_steps=40)
    make = functools.partial(ChunkEnv, spec)  # in this process: the rule is ChunkEnv's, not the workers'
    with closing(gym.vector.SyncVectorEnv([make, make], autoreset_mode=gym.vector.AutoresetMode.DISABLED)) as envs:
        envs.reset(seed=[1, 2])
        actions = np.zeros((2, spec.chunk_len, spec.action_dim), np.float32)
        actions[0, 3, 1] = np.nan
        _, _, _, _, info = envs.step(actions)
        assert list(info["over"]) == [True, False]
        _, _, _, _, info = envs.step(np.zeros_like(actions))
        first, second = envs.call("row")
    assert first["failure"] == NON_FINITE and first["steps"] == 0 and not first["success_once"]
    assert second["failure"] == "" and second["steps"] == 2 * spec.chunk_len


def test_a_policy_that_emits_nan_fails_its_episodes_without_crashing(policy_dir, smoke_params, tmp_path):
    broken = nan_action_policy(policy_dir, tmp_path / "nan_policy")
    params = load_params(smoke_params)
    metrics = evaluate(load_policy(broken), "PushCube-v1", params.evaluate, tmp_path / "eval", progress=False)
    assert metrics["episodes"] == 2 and metrics["success_once"] == 0 and metrics["failed_to_act"] == 2


def _evaluate_cli(smoke_params, tmp_path, *extra):
    args = ["--params", str(smoke_params), "--task", "PushCube-v1", "--out", str(tmp_path / "out"), *extra]
    return run_module("components.evaluate", *args)


def test_bad_model_uri_is_a_clear_error(smoke_params, tmp_path):
    # A real process once: the exit code of `python -m` itself.
    cmd = ["--params", str(smoke_params), "--task", "PushCube-v1", "--out", str(tmp_path / "out")]
    missing = ["--model-uri", str(tmp_path / "no_such_policy")]
    result = subprocess.run(
        [sys.executable, "-m", "components.evaluate", *cmd, *missing], capture_output=True, text=True
    )
    assert result.returncode == 2 and "no_such_policy" in result.stderr
    result = _evaluate_cli(smoke_params, tmp_path, "--model-uri", "models:/par-never-registered@champion")
    assert result.returncode == 2 and "cannot resolve model URI" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_is_a_clear_error(policy_dir, smoke_params, tmp_path):
    broken = tmp_path / "policy"
    shutil.copytree(policy_dir, broken)
    (broken / "model" / "model.safetensors").unlink()
    result = _evaluate_cli(smoke_params, tmp_path, "--model-uri", str(broken))
    assert result.returncode == 2 and "no model weights" in result.stderr


def test_dataset_model_mismatch_is_a_clear_error(policy_dir, smoke_params, demos, tmp_path):
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    manifest = json.loads((demos / "PushCube-v1" / "manifest.json").read_text())
    manifest["control_mode"] = "pd_ee_delta_pose"
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    result = _evaluate_cli(smoke_params, tmp_path, "--model-uri", str(policy_dir), "--dataset", str(dataset))
    assert result.returncode == 2 and "dataset/model mismatch" in result.stderr and "control_mode" in result.stderr
    # A proprio layout other than the policy's (which has the default) is refused too.
    manifest = json.loads((demos / "PushCube-v1" / "manifest.json").read_text())
    assert manifest["proprio"] == ["qpos", "goal_pos"]
    manifest["proprio"] = ["qpos", "goal_pos", "tcp_to_goal"]
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    result = _evaluate_cli(smoke_params, tmp_path, "--model-uri", str(policy_dir), "--dataset", str(dataset))
    assert result.returncode == 2 and "proprio" in result.stderr and "tcp_to_goal" in result.stderr
    result = run_module(
        "components.evaluate",
        *("--params", str(smoke_params), "--task", "PegInsertionSide-v1"),
        *("--model-uri", str(policy_dir), "--out", str(tmp_path / "o2")),
    )
    assert result.returncode == 2 and "not trained on task 'PegInsertionSide-v1'" in result.stderr


def test_protocol_seeds():
    paper = EvaluateParams(episodes=125, seed_start=1000)
    assert [s for s, _ in protocol_seeds(paper, None, None)] == list(range(1000, 1125))
    assert protocol_seeds(paper, 1010, 5) == [(s, s) for s in range(1010, 1015)]
    rdt = protocol_seeds(EvaluateParams(protocol="rdt"), None, None)
    assert len(rdt) == 250 and rdt[0] == (20241201, 20241201) and rdt[25] == (20241226, 20241202)
    with pytest.raises(Exception, match="outside the protocol"):
        protocol_seeds(paper, 5, 1)


@pytest.mark.parametrize("protocol, episodes, shards", [("paper", 5, 2), ("paper", 125, 8), ("rdt", 125, 3)])
def test_shards_cover_every_episode_once(protocol, episodes, shards):
    params = EvaluateParams(protocol=protocol, episodes=episodes, shards=shards)
    plan = shard_plan(params)
    covered = [s for first, n in plan for s, _ in protocol_seeds(params, first, n)]
    assert covered == [s for s, _ in protocol_seeds(params, None, None)]
    assert len(plan) <= shards and all(n > 0 for _, n in plan)
    if (protocol, episodes, shards) == ("paper", 5, 2):
        assert plan == [(1_000_000, 3), (1_000_003, 2)]


def test_wilson_interval_known_values():
    low, high = wilson_interval(125, 125)
    assert high == 1.0 and abs(low - 0.9702) < 1e-3
    low, high = wilson_interval(62, 125)
    assert abs(low - 0.4097) < 1e-3 and abs(high - 0.5826) < 1e-3
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_score_video_prediction_per_horizon(policy_dir, encoded, demos, tmp_path):
    from components.formats.plots import save_score_plot
    from components.score import score

    metrics = score(load_policy(policy_dir), encoded, demos, ["PushCube-v1", "StackCube-v1"], tmp_path / "s", 3, 1)
    push = metrics["per_task"]["PushCube-v1"]
    assert push["episodes"] == 1 and len(push["psnr_per_step"]) == 3 and len(push["ssim_per_step"]) == 3
    assert all(0 < v < 100 for v in push["psnr_per_step"]) and len(push["action_mae_per_step"]) == 3
    assert "psnr" in metrics and "action_mae" in metrics
    assert len(list((tmp_path / "s" / "videos").glob("*.mp4"))) == 2
    save_score_plot(metrics["per_task"], tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0
    rows = (tmp_path / "plot.csv").read_text().splitlines()  # the DVC plot's data: a row a task and horizon
    assert rows[0] == "task,horizon,psnr,ssim,action_mae" and len(rows) == 1 + 2 * 3


def test_unrendered_steps_reach_the_same_state_as_env_step(simulator):
    """Evaluation renders only the frame after each chunk: the state, the info and the
    frame it then sees must be those of stepping with ``env.step`` throughout."""
    from components.formats.params import CameraParams
    from components.integrations.maniskill import env_kwargs, frame_of, make_env, proprio_of, step_unobserved

    kwargs = env_kwargs("pd_joint_pos", CameraParams(width=64, height=64), "panda", "physx_cpu", 50)
    envs = [make_env("PushCube-v1", kwargs) for _ in range(2)]
    try:
        for env in envs:
            env.reset(seed=7)
        rng = np.random.default_rng(0)
        actions = rng.uniform(-0.3, 0.3, size=(2, 8, 8)).astype(np.float32)
        actions[..., -1] = 1.0
        for chunk in actions:
            for action in chunk:
                full_obs, _, _, _, full_info = envs[0].step(action)
            for action in chunk[:-1]:
                step_unobserved(envs[1], action)
            fast_obs, _, _, _, fast_info = envs[1].step(chunk[-1])
            np.testing.assert_array_equal(proprio_of(fast_obs), proprio_of(full_obs))
            np.testing.assert_array_equal(frame_of(fast_obs, "base_camera"), frame_of(full_obs, "base_camera"))
            assert bool(fast_info["success"]) == bool(full_info["success"])
            assert int(fast_info["elapsed_steps"]) == int(full_info["elapsed_steps"])
    finally:
        for env in envs:
            env.close()


def test_progress_flags_say_where_an_episode_stopped(simulator):
    """The task's boolean info flags (not success, not counters) become per-episode
    'reached' flags and their rates in the metrics."""
    from components.evaluate import summarize
    from components.formats.params import CameraParams
    from components.integrations.maniskill import env_kwargs, make_env, progress_flags

    env = make_env("PickCube-v1", env_kwargs("pd_joint_pos", CameraParams(), "panda", "physx_cpu", 50))
    try:
        env.reset(seed=0)
        _, _, _, _, info = env.step(np.zeros(8, np.float32))
    finally:
        env.close()
    flags = progress_flags(info)
    assert set(flags) == {"is_grasped", "is_obj_placed", "is_robot_static"}, flags
    assert flags["is_grasped"] is False and flags["is_obj_placed"] is False
    rows = [
        {
            "seed": 0,
            "success_once": False,
            "success_at_end": False,
            "steps": 5,
            "failure": "",
            "reached": {"is_grasped": True},
        },
        {
            "seed": 1,
            "success_once": False,
            "success_at_end": False,
            "steps": 5,
            "failure": "",
            "reached": {"is_grasped": False},
        },
        {"seed": 2, "success_once": False, "success_at_end": False, "steps": 5, "failure": ""},  # an older row
    ]
    assert summarize(rows, "PickCube-v1")["reached"] == {"is_grasped": round(1 / 3, 4)}
