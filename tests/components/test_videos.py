"""The action-free video corpus: collected from ManiSkill's planners and the user's
files, validated, encoded beside the demos, and mixed into video pretraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from components.errors import ComponentError
from components.formats.params import ParamsError, load_params
from components.integrations.video_files import fit_frame, read_video
from components.validate import ValidationFailedError, validate_corpus
from tests.cli import run_module
from tests.components.conftest import CORPUS_SOURCES, CORPUS_VIDEOS, TASKS, moving_square_video, write_params


def test_the_corpus_holds_frames_of_every_source_and_no_action(corpus):
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["actions"] == "discarded" and manifest["frame_shape"] == [64, 64, 3]
    clips = {c["label"]: c for c in manifest["clips"]}
    assert sorted(clips) == ["PlaceSphere-v1", "PullCube-v1", "mine"]
    assert manifest["sources"]["other-tasks"]["clips"] == 2 and manifest["sources"]["mine"]["clips"] == 1
    assert manifest["sources"]["other-tasks"]["trained_tasks"] == []  # neither is a smoke task
    assert manifest["counts"]["clips"] == 3
    for clip in manifest["clips"]:
        with np.load(corpus / clip["file"]) as data:
            assert data.files == ["frames"]  # nothing but frames
            frames = data["frames"]
        assert frames.dtype == np.uint8 and frames.shape == (clip["frames"], 64, 64, 3)
        assert 10 <= clip["frames"] <= CORPUS_VIDEOS["max_frames"]
    # The user's 2-second video at 15 fps, sampled at 10 fps: 20 frames.
    assert clips["mine"]["frames"] == 20 and clips["mine"]["origin"] == "square.mp4"
    assert clips["PullCube-v1"]["origin"].startswith("seed ")


def test_a_video_file_is_sampled_at_the_asked_rate_and_cropped_to_the_frame(tmp_path):
    for name in ("wide.mp4", "wide.gif", "wide.webm"):
        # 3 s at 10 fps (a gif's frame lasts a whole number of hundredths of a second)
        path = moving_square_video(tmp_path / name, frames=30, fps=10, size=(96, 128))
        frames = read_video(path, fps=5.0, height=32, width=32, max_frames=100)
        assert frames.shape == (15, 32, 32, 3), name
        assert read_video(path, fps=30.0, height=32, width=32, max_frames=100).shape[0] == 90, name
        assert read_video(path, fps=5.0, height=32, width=32, max_frames=4).shape[0] == 4, name
    wide = np.zeros((60, 120, 3), np.uint8)
    wide[:, 30:90] = 255  # the centre square of a 2:1 frame survives the crop whole
    assert fit_frame(wide, 16, 16).min() > 200


def _corpus_cli(params: Path, folder: Path, out: Path):
    return run_module("components.videos", "--params", str(params), "--user-videos", str(folder), "--out", str(out))


@pytest.mark.parametrize("on_error", ["refuse", "skip"])
def test_a_broken_video_file_is_named_and_refused_or_skipped(tmp_path, on_error):
    folder = tmp_path / "videos"
    folder.mkdir()
    moving_square_video(folder / "good.mp4")
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (folder / "empty.webm").write_bytes(b"")
    moving_square_video(folder / "short.gif", frames=3)
    (folder / "notes.txt").write_text("not a video")
    videos = {"sources": {"mine": {"kind": "folder", "on_error": on_error}}}
    params = write_params(tmp_path / "params.yaml", videos=videos)
    out = tmp_path / "corpus"
    result = _corpus_cli(params, folder, out)
    if on_error == "refuse":
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "corrupt.mp4" in result.stderr and not out.exists()
        return
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["origin"] for c in manifest["clips"]] == ["good.mp4"]
    skipped = {s["file"]: s["reason"] for s in manifest["sources"]["mine"]["skipped"]}
    assert set(skipped) == {"corrupt.mp4", "empty.webm", "short.gif"}
    assert "fewer than videos.min_frames" in skipped["short.gif"]
    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`par.stage` = 'videos'")
    summary = runs.sort_values("start_time").iloc[-1]  # the corpus in MLflow: per source, and skipped
    assert summary["metrics.mine.clips"] == 1 and summary["metrics.mine.skipped"] == 3


def test_a_folder_source_without_videos_is_a_clear_error(tmp_path):
    params = write_params(tmp_path / "params.yaml", videos={"sources": {"mine": {"kind": "folder"}}})
    result = _corpus_cli(params, tmp_path / "nothing-here", tmp_path / "corpus")
    assert result.returncode == 2 and "no video files" in result.stderr and "nothing-here" in result.stderr


def test_corpus_validation_names_blank_frozen_and_action_carrying_clips(corpus, corpus_params, tmp_path):
    params = load_params(corpus_params)
    summary = validate_corpus(corpus, params, tmp_path / "ok")
    assert summary["success"] and summary["clips"] == 3
    assert (tmp_path / "ok" / "data_docs" / "index.html").is_file()

    broken = tmp_path / "broken"
    shutil.copytree(corpus, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    files = [broken / c["file"] for c in manifest["clips"]]
    frames = [np.load(f)["frames"] for f in files]
    np.savez_compressed(files[0], frames=np.full_like(frames[0], 128))  # blank
    np.savez_compressed(files[1], frames=np.repeat(frames[1][:1], len(frames[1]), axis=0))  # frozen
    np.savez_compressed(files[2], frames=frames[2], actions=np.zeros((len(frames[2]) - 1, 8), np.float32))
    with pytest.raises(ValidationFailedError) as failed:
        validate_corpus(broken, params, tmp_path / "report")
    text = str(failed.value)
    assert "frame_std" in text and "clips [0" in text
    assert "moving_fraction" in text and "arrays" in text
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    failing = {e["column"]: e["failing_clips"] for e in results["expectations"] if not e["success"]}
    assert failing["frame_std"] == [0] and 1 in failing["moving_fraction"] and failing["arrays"] == [2]


def test_an_empty_corpus_validates_and_encodes_as_before(tmp_path):
    # A camera placed by eye and target: its manifest (JSON lists) matches params (tuples).
    camera = {"eye": [0.45, 0.0, 0.6], "target": [0.05, 0.0, 0.0], "fov": 0.9}
    smoke_params = write_params(tmp_path / "params.yaml", collect={"demos_per_task": 2, "camera": camera})
    out = tmp_path / "corpus"
    assert _corpus_cli(smoke_params, tmp_path / "none", out).returncode == 0
    assert json.loads((out / "manifest.json").read_text())["counts"] == {
        "clips": 0, "frames": 0, "min_frames": 0, "max_frames": 0,
    }  # fmt: skip
    assert validate_corpus(out, load_params(smoke_params), tmp_path / "v")["success"]


def test_encode_writes_the_corpus_beside_the_demos(encoded, corpus):
    stats = json.loads((encoded / "stats.json").read_text())
    clips = json.loads((corpus / "manifest.json").read_text())["clips"]
    assert stats["corpus"]["clips"] == 3 and stats["corpus"]["frames"] == sum(c["frames"] for c in clips)
    assert set(stats["corpus"]["sources"]) == {"other-tasks", "mine"}
    with np.load(encoded / "corpus.npz") as data:
        assert data["latents"].shape == (data["frame_offsets"][-1], *stats["latent_shape"])
        assert np.diff(data["frame_offsets"]).tolist() == [c["frames"] for c in clips]
        assert data["label"].tolist() == [c["label"] for c in clips]
        assert np.isfinite(data["latents"]).all()


def test_pretraining_on_a_mix_records_its_clips_and_hands_its_weights_to_the_policy(encoded, demos, tmp_path):
    from components.formats.latents import load_stats
    from components.ml.fit import FitPaths, fit
    from components.ml.models import build_model
    from par.checkpoint import load_pretrained

    mix = {"demos": 1.0, "other-tasks": 2.0, "mine": 1.0}
    params_path = write_params(
        tmp_path / "params.yaml", videos=CORPUS_VIDEOS,
        pretrain={"steps": 4, "batch_size": 8, "checkpoint_every": 4, "log_every": 2, "warmup_steps": 1, "mix": mix},
    )  # fmt: skip
    out = tmp_path / "pretrained"
    fit(
        "pretrain",
        load_params(params_path),
        params_path,
        FitPaths(encoded, out, tmp_path / "c", tmp_path / "m.json", tmp_path),
    )
    record = json.loads((out / "sources.json").read_text())
    assert record["labels"] == [*TASKS, "PlaceSphere-v1", "PullCube-v1", "mine"]
    assert {name: s["weight"] for name, s in record["sources"].items()} == mix
    assert sum(c["windows"] for c in record["clips"]) == 4 * 8  # every window drawn, accounted for
    assert [c["origin"] for c in record["clips"] if c["source"] == "mine"] == ["square.mp4"]
    assert record["sources"]["other-tasks"]["episodes"] == 2 and record["sources"]["demos"]["episodes"] == 3

    stats = load_stats(encoded)
    policy = build_model(load_params(params_path).model, stats, TASKS)
    report = load_pretrained(policy, out / "model")
    assert "task_embed[:3]" in report.taken and not report.mismatched
    assert any(name.startswith("transformer.") for name in report.taken)


def test_mix_and_sources_are_checked_against_each_other(tmp_path):
    def load(**sections):
        return load_params(write_params(tmp_path / "p.yaml", **sections))

    with pytest.raises(ParamsError, match=r"pretrain.mix names \['elsewhere'\]"):
        load(pretrain={"mix": {"demos": 1.0, "elsewhere": 1.0}})
    with pytest.raises(ParamsError, match="at least one source needs a weight above 0"):
        load(pretrain={"mix": {"demos": 0.0}})
    with pytest.raises(ParamsError, match="overlap the demos' seeds"):
        load(videos={"sources": {"own": {"kind": "maniskill", "tasks": ["PushCube-v1"], "seed_start": 0}}})
    with pytest.raises(ParamsError, match="overlap the evaluation's seeds"):
        own = {"kind": "maniskill", "tasks": ["PushCube-v1"], "seed_start": 999_990}
        load(videos={"sources": {"own": own}})
    with pytest.raises(ParamsError, match="not 'demos'"):
        load(videos={"sources": {"demos": CORPUS_SOURCES["mine"]}})
    assert load(videos={"sources": CORPUS_SOURCES}, pretrain={"mix": {"other-tasks": 1.0}}).pretrain.mix


def test_a_mix_that_names_a_source_encode_never_saw_is_a_clear_error(encoded, tmp_path):
    from components.ml.video_data import video_data

    with pytest.raises(ComponentError, match=r"gives weight to \['absent'\]"):
        video_data(encoded, TASKS, {"demos": 1.0, "absent": 1.0})


def test_encode_vae_frames_demos_fits_the_vae_as_if_there_were_no_corpus(demos, corpus, smoke_params, tmp_path):
    """encode.vae_frames: demos: the VAE is the one the demos alone give (to the byte),
    and the corpus is still encoded by it; the default fits the corpus's frames too."""
    from components.encode import encode

    base = load_params(smoke_params).encode
    short = {"vae": base.vae.model_copy(update={"steps": 3})}
    datasets = [demos / t for t in TASKS]
    vaes = {}
    for name, frames, videos in (("alone", "demos", None), ("demos", "demos", corpus), ("both", None, corpus)):
        params = base.model_copy(update=short | ({"vae_frames": frames} if frames else {}))  # None: the default
        out = tmp_path / name
        encode(datasets, params, out, tmp_path / f"{name}.json", tmp_path / f"{name}.png", False, videos)
        vaes[name] = (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
        clips = json.loads((out / "stats.json").read_text())["corpus"]["clips"]
        assert clips == (0 if videos is None else 3), name
    assert vaes["demos"] == vaes["alone"] != vaes["both"]
