"""Benchmarks of the data path and the stages; prints one JSON object.

    python -m tests.benchmarks.stages --task PushCube-v1 --demos 10

* collection: demos per minute of ``components.collect`` (one worker), and the ratio
  of its wall time to ManiSkill's own tools producing the same demos (seeds from 0):
  ``mani_skill.examples.motionplanning.panda.run`` (plan, state only) followed by
  ``mani_skill.trajectory.replay_trajectory`` to the same 64x64 camera (their
  documented route to camera frames);
* encoding: frames per second through the VAE encoder;
* every stage's wall time and peak resident memory (``/usr/bin/time``), running each
  stage's command line from ``dvc.yaml`` one after another (never overlapping) in a
  scratch folder, with a short configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PY = sys.executable


def timed(cmd: list[str], cwd: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (MB) of a command, via GNU time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as out:
        start = time.perf_counter()
        result = subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", out.name, *cmd], cwd=cwd, capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
        peak_kb = float(out.read().strip().splitlines()[-1])
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(peak_kb / 1024, 1)}


def maniskill_route(task: str, demos: int, work: Path) -> dict[str, float]:
    """ManiSkill's own planner script, then its replay tool to one 64x64 camera."""
    work.mkdir(parents=True, exist_ok=True)
    plan = timed(
        [
            PY,
            "-m",
            "mani_skill.examples.motionplanning.panda.run",
            "-e",
            task,
            "-n",
            str(demos),
            "--only-count-success",
            "-o",
            "none",
            "-b",
            "cpu",
            "--record-dir",
            str(work),
            "--traj-name",
            "demo",
        ],
        work,
    )
    traj = work / task / "motionplanning" / "demo.h5"
    meta = json.loads(traj.with_suffix(".json").read_text())
    meta["env_info"]["env_kwargs"]["sensor_configs"] = {"width": 64, "height": 64, "shader_pack": "minimal"}
    traj.with_suffix(".json").write_text(json.dumps(meta))
    replay = timed(
        [
            PY,
            "-m",
            "mani_skill.trajectory.replay_trajectory",
            "--traj-path",
            str(traj),
            "-o",
            "rgb",
            "-c",
            "pd_joint_pos",
            "--save-traj",
            "-b",
            "physx_cpu",
        ],
        work,
    )
    return {
        "plan_seconds": plan["seconds"],
        "replay_seconds": replay["seconds"],
        "seconds": round(plan["seconds"] + replay["seconds"], 1),
    }


def encode_fps(demos_dir: Path, frames_limit: int = 2000) -> float:
    import numpy as np
    import torch

    from components.formats.dataset import iter_demos
    from components.formats.params import VAEParams
    from components.ml.vae import build_vae, encode_frames

    frames = np.concatenate([d.frames for d in iter_demos(demos_dir)])[:frames_limit]
    vae = build_vae(VAEParams(), frames.shape[1]).eval()
    encode_frames(vae, frames[:64], 64)
    start = time.perf_counter()
    with torch.no_grad():
        encode_frames(vae, frames, 64)
    return round(len(frames) / (time.perf_counter() - start), 1)


SHORT = {
    "encode": {"holdout_episodes": 1, "vae": {"steps": 100}},
    "model": {"size": "tiny"},
    "pretrain": {"steps": 50, "checkpoint_every": 50},
    "train": {"steps": 100, "checkpoint_every": 100},
    "evaluate": {"episodes": 5, "videos": 0},
    "score": {"horizon": 4, "videos": 0},
}


def stage_argv(command: str) -> list[str]:
    """A dvc.yaml command line, run by this interpreter."""
    argv = shlex.split(command)
    return [PY, *argv[1:]] if argv[0] == "python" else argv


def time_stages(task: str, work: Path) -> dict[str, dict[str, float]]:
    """Every stage of dvc.yaml, one after another, in ``work`` (which holds params.yaml)."""
    from components.orchestration.stages import load_stages

    return {
        name: timed(stage_argv(stage.command(task) if stage.per_task else stage.command()), work)
        for name, stage in load_stages().items()
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="PushCube-v1")
    parser.add_argument("--demos", type=int, default=10)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="par-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    params = {"tasks": [args.task], "collect": {"demos_per_task": args.demos, "workers": 1}, **SHORT}
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "PAR_PIPELINE_KEY": "bench"})
    stages = time_stages(args.task, work)
    ours = stages["collect"]["seconds"]
    theirs = maniskill_route(args.task, args.demos, work / "maniskill")
    result = {
        "task": args.task,
        "demos": args.demos,
        "collect_demos_per_minute": round(args.demos / ours * 60, 1),
        "maniskill_route": theirs,
        "collect_vs_maniskill_ratio": round(ours / theirs["seconds"], 3),
        "encode_frames_per_s": encode_fps(work / "data" / "demos" / args.task),
        "stages": stages,
        "stage_config": "tiny model, 50 pretrain / 100 train steps, 5 evaluation episodes",
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
