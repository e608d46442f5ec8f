"""videos: an action-free video corpus for video pretraining.

    python -m components.videos --params params.yaml --user-videos data/user_videos --out data/videos

Each entry of ``videos.sources`` adds clips (docs/videos.md):

* ``kind: maniskill``: ManiSkill's motion planner solves seeded episodes of the listed
  tasks (other tasks than the run's, or the run's own as cheap in-domain video), seen
  by the demos' camera (same size, shader and view); only the frames are kept, the
  actions are thrown away here, and the manifest says so.
* ``kind: folder``: the user's own video files in ``--user-videos`` (mp4, webm, gif...),
  sampled at ``fps`` and centre-cropped and resized to the frame; a file that cannot be
  decoded is refused by name, or skipped and listed (``on_error``).

The output (components.formats.corpus) is written atomically; with no source it is an
empty corpus, and every later stage runs as before. A corpus with clips is summarised in
MLflow (clips and frames per source, the manifest), in the pipeline run's ``videos`` run.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from components.console import Progress, log, run_cli
from components.errors import ComponentError
from components.formats.corpus import FORMAT
from components.formats.files import atomic_output, write_json
from components.formats.params import FolderVideos, ManiSkillVideos, Params, load_params
from components.integrations.maniskill import camera_names, env_kwargs, frame_shape, planner_for, versions
from components.integrations.planner import attempts
from components.integrations.video_files import VideoFileError, read_video, video_files

MAX_EPISODE_STEPS = 1000  # the planner decides when an episode ends
Clip = tuple[np.ndarray, str, str]  # frames, label, origin


def _planner_kwargs(task: str, params: Params) -> tuple[dict[str, Any], list[str]]:
    """gym.make kwargs and camera names for a task's clips: the demos' camera (a trained
    task's own view); a task that is not trained keeps its own robot (DrawTriangle's is
    a stick, StackPyramid's carries a hand camera) unless frames include the hand camera."""
    collect = params.collect
    camera = collect.camera_for(task) if task in params.tasks else collect.camera
    kwargs = env_kwargs(collect.control_mode, camera, collect.robot_uids, collect.sim_backend, MAX_EPISODE_STEPS)
    if task not in params.tasks and not camera.hand_camera:
        kwargs.pop("robot_uids")
    return kwargs, camera_names(camera.manifest())


def maniskill_clips(name: str, source: ManiSkillVideos, params: Params, progress: bool) -> Iterator[Clip]:
    """``clips_per_task`` successful planner episodes of each task, frames only."""
    videos = params.videos
    for task in source.tasks:
        planner_for(task)  # fail fast on tasks without a planner
        kwargs, cameras = _planner_kwargs(task, params)
        kept, tried, why = 0, 0, Counter()
        seeds = source.seeds()
        with Progress(f"videos {name} {task}", source.clips_per_task, "clips", enabled=progress) as bar:
            results = attempts(task, kwargs, cameras, list(params.collect.proprio), seeds, videos.workers)
            for result in results:
                tried += 1
                if result["ok"] and len(result["frames"]) < videos.min_frames:
                    result = {"ok": False, "reason": f"fewer than videos.min_frames {videos.min_frames} frames"}
                if not result["ok"]:
                    why[result["reason"].split(":")[0]] += 1
                    continue
                kept += 1
                bar.update(1, note=f"planner success {kept / tried:.0%}")
                yield result["frames"][: videos.max_frames], task, f"seed {result['seed']}"
                if kept == source.clips_per_task:
                    results.close()
                    break
        if kept < source.clips_per_task:
            raise ComponentError(
                f"videos.sources.{name}: only {kept} of {source.clips_per_task} {task} clips in {tried} planner "
                f"attempts (seeds from {seeds.start}; {dict(why)}); raise max_attempts_per_clip"
            )


def folder_clips(name: str, source: FolderVideos, folder: Path, params: Params, skipped: list) -> Iterator[Clip]:
    """The folder's video files as clips; undecodable or short files refused or skipped."""
    files = video_files(folder)[: source.max_clips]
    if not files:
        raise ComponentError(f"videos.sources.{name}: no video files (.mp4, .webm, .gif, ...) in {folder}")
    height, width, _ = frame_shape(params.collect.camera)
    for path in files:
        try:
            frames = read_video(path, source.fps, height, width, params.videos.max_frames)
            if len(frames) < params.videos.min_frames:
                raise VideoFileError(
                    f"video file {path} gives {len(frames)} frames at {source.fps:g} fps, fewer than "
                    f"videos.min_frames {params.videos.min_frames}"
                )
        except VideoFileError as exc:
            if source.on_error == "refuse":
                raise VideoFileError(f"{exc} (videos.sources.{name}.on_error: skip to leave it out)") from exc
            log.warning("skipping %s", exc)
            skipped.append({"file": path.name, "reason": str(exc)})
            continue
        yield frames, name, path.name


def build_corpus(params: Params, user_videos: Path, out: Path, progress: bool = True) -> dict[str, Any]:
    """Write every source's clips and the manifest into ``out``."""
    started, clips, sources = time.perf_counter(), [], {}
    with atomic_output(out) as tmp:
        (tmp / "clips").mkdir()
        for name, source in params.videos.sources.items():
            skipped: list[dict[str, str]] = []
            if isinstance(source, ManiSkillVideos):
                made = maniskill_clips(name, source, params, progress)
            else:
                made = folder_clips(name, source, user_videos, params, skipped)
            first = len(clips)
            for frames, label, origin in made:
                file = f"clips/clip_{len(clips):05d}.npz"
                np.savez_compressed(tmp / file, frames=frames)
                clips.append({"file": file, "source": name, "label": label, "frames": len(frames), "origin": origin})
            mine = clips[first:]
            sources[name] = _source_entry(source, params, mine, skipped)
        manifest = _manifest(params, sources, clips)
        write_json(tmp / "manifest.json", manifest)
    seconds = time.perf_counter() - started
    log.info(
        "video corpus: %d clips, %d frames from %s in %.0f s",
        *(len(clips), manifest["counts"]["frames"], ", ".join(sources) or "no source", seconds),
    )
    return manifest


def _source_entry(source: ManiSkillVideos | FolderVideos, params: Params, clips: list, skipped: list) -> dict:
    entry = source.model_dump(mode="json") | {"clips": len(clips), "frames": sum(c["frames"] for c in clips)}
    if isinstance(source, ManiSkillVideos):
        entry["trained_tasks"] = sorted(set(source.tasks) & set(params.tasks))  # in-domain video
    return entry | {"skipped": skipped}


def _manifest(params: Params, sources: dict[str, Any], clips: list[dict[str, Any]]) -> dict[str, Any]:
    """The corpus's manifest: no timing, so the same params write the same bytes."""
    lengths = [c["frames"] for c in clips]
    return {
        "format": FORMAT,
        "actions": "discarded",
        "frame_shape": frame_shape(params.collect.camera),
        "camera": params.collect.camera.manifest(),
        "sources": sources,
        "clips": clips,
        "counts": {
            "clips": len(clips),
            "frames": int(sum(lengths)),
            "min_frames": int(min(lengths, default=0)),
            "max_frames": int(max(lengths, default=0)),
        },
        "versions": versions() if any(isinstance(s, ManiSkillVideos) for s in params.videos.sources.values()) else {},
    }


def log_corpus(manifest: dict[str, Any], params_path: Path) -> None:
    """The corpus in MLflow: what each source holds, and the manifest itself."""
    from components.integrations.tracking import stage_run

    with stage_run("videos", params_path) as run:
        import mlflow

        metrics = {"clips": manifest["counts"]["clips"], "frames": manifest["counts"]["frames"]}
        for name, source in manifest["sources"].items():
            metrics |= {f"{name}.clips": source["clips"], f"{name}.frames": source["frames"]}
            metrics[f"{name}.skipped"] = len(source["skipped"])
        mlflow.log_metrics(metrics)
        mlflow.log_params({f"{name}.kind": source["kind"] for name, source in manifest["sources"].items()})
        mlflow.log_dict(manifest, "corpus/manifest.json")
        log.info("corpus summarised in MLflow run %s", run.info.run_id)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--params", default="params.yaml", type=Path, help="params file (sections videos, collect, tasks)"
    )
    parser.add_argument("--user-videos", type=Path, required=True, help="folder of a folder source's video files")
    parser.add_argument("--out", required=True, type=Path, help="corpus folder to write")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    manifest = build_corpus(load_params(args.params), args.user_videos, args.out, progress=not args.no_progress)
    if manifest["clips"]:
        log_corpus(manifest, args.params)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
