"""The training run that pretrain and train share: data, initialisation, checkpoints,
resume, MLflow, progress, and the model or policy it writes.

``mode="pretrain"`` trains the network on frame-only windows of every task's frames
(video pretraining) and writes the model; ``mode="train"`` trains on physical tokens,
initialised from the pretrained model unless the ablation is ``no_video_pretrain``, and
writes a policy bundle (components.formats.policy).

Checkpoints: ``<checkpoints>/<step>/{model/, training_state.pt}`` plus ``last`` (a link
to the newest). Training state holds the optimizer, the data/noise RNG, the step and the
MLflow run id. Rerun after a kill and training resumes from ``last``, continues the same
MLflow run, and ends with the same weights as an uninterrupted run. Checkpoints made
under another configuration are set aside, not resumed.

With ``nproc`` above 1 the command line launches torchrun (components.ml.distributed)
and every rank runs :func:`fit`: all of them train (DDP, a share of each global batch
each), rank 0 alone opens the MLflow run, writes checkpoints (with every rank's data
RNG and sampler state) and the outputs; on resume every rank loads the checkpoint
rank 0 chose.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from components.console import Progress, log
from components.errors import ComponentError
from components.formats.files import atomic_output, write_json
from components.formats.latents import load_episodes, load_stats
from components.formats.params import OptimParams, Params
from components.formats.plots import save_grid, save_loss_plot
from components.formats.policy import normalizers_from_stats, save_policy
from components.ml import distributed
from components.ml.distributed import World, broadcast, check_world
from components.ml.models import build_model, train_config
from components.ml.vae import load_vae
from components.ml.video_data import VideoData, video_data
from par.baseline import BCConfig, BCPolicy
from par.checkpoint import LoadReport, load_model, load_pretrained, save_model
from par.config import ModelConfig
from par.data import Episode, WindowSampler
from par.model import PAR
from par.training import StepResult, Trainer

Mode = Literal["pretrain", "train"]
SOURCES = "sources.json"  # pretrain's record of the clips it drew its windows from


@dataclass(frozen=True)
class FitPaths:
    """Where a training run reads and writes (``dvc.yaml``'s deps and outs of the stage)."""

    encoded: Path  # encode's output folder
    out: Path  # the model (pretrain) or the policy bundle (train)
    checkpoints: Path  # kept between runs, for resuming
    metrics: Path  # the stage's metrics JSON
    plots: Path  # the loss curve (PNG, and its numbers as CSV)
    pretrained: Path | None = None  # pretrain's output (train)


@dataclass
class Setup:
    """A run's model, data and initialisation, before any step."""

    mode: Mode
    params: Params
    optim: OptimParams
    tasks: list[str]
    stats: dict[str, Any]
    model: PAR | BCPolicy
    episodes: list[Episode]
    init: str = "scratch"
    load_report: LoadReport | None = None
    video: VideoData | None = None  # pretrain's sources (components.ml.video_data)

    def sampler(self) -> WindowSampler:
        """Windows of the run's episodes; pretraining draws each of its sources by weight."""
        config, video = self.model.config, self.video
        mixed = video is not None and len(video.sources) > 1  # one source: plain sampling, as before mixes
        return WindowSampler(
            self.episodes, config.context_steps, config.chunk_len, video=self.mode == "pretrain",
            balance_tasks=self.optim.balance_tasks, groups=video.groups if mixed else None,
            group_weights=video.weights if mixed else None,
        )  # fmt: skip


def skip_reason(mode: Mode, params: Params) -> str | None:
    if mode == "pretrain" and params.model.kind == "bc":
        return "the baseline has no video mode"
    if mode == "pretrain" and not params.pretrain.enabled:
        return "pretrain.enabled is false"
    return None


def _write_skipped(reason: str, paths: FitPaths) -> dict[str, Any]:
    marker = {"skipped": True, "reason": reason}
    with atomic_output(paths.out) as tmp:
        write_json(tmp / "SKIPPED.json", marker)
    # dvc.yaml declares the checkpoint folder an output: it must exist after the stage.
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    write_json(paths.checkpoints / "SKIPPED.json", marker)
    write_json(paths.metrics, marker)
    save_loss_plot([], paths.plots / "pretrain_loss.png", f"pretrain skipped: {reason}")
    log.info("pretrain skipped: %s", reason)
    return {"skipped": True}


def _initialise(setup: Setup, pretrained: Path | None) -> None:
    """Load the video-pretrained weights into a physical model, when the run wants them."""
    params = setup.params
    wants = params.model.kind == "par" and params.model.ablation != "no_video_pretrain" and params.pretrain.enabled
    if setup.mode != "train" or not wants:
        return
    if pretrained is None or not (pretrained / "model").is_dir():
        raise ComponentError(
            f"pretrained model {pretrained} not found: run pretrain first, or set model.ablation: no_video_pretrain"
        )
    setup.load_report = load_pretrained(setup.model, pretrained / "model")
    weights = (pretrained / "model" / "model.safetensors").read_bytes()
    setup.init = f"video-pretrained:{hashlib.sha256(weights).hexdigest()[:16]}"
    log.info("video-pretrained weights: %s", setup.load_report.summary())


def prepare(mode: Mode, params: Params, paths: FitPaths) -> Setup | None:
    """Model, data and initial weights of the run; None when the stage is skipped."""
    stats = load_stats(paths.encoded)
    tasks = list(params.tasks)
    missing = [t for t in tasks if t not in stats["tasks"]]
    if missing:
        raise ComponentError(f"tasks {missing} are not in the encoded data {paths.encoded} (it has {stats['tasks']})")
    optim: OptimParams = params.pretrain if mode == "pretrain" else params.train
    if skip_reason(mode, params):
        return None
    video = video_data(paths.encoded, tasks, params.pretrain.mix) if mode == "pretrain" else None
    torch.manual_seed(optim.seed)  # initial weights: part of "the same seed gives the same model"
    model = build_model(params.model, stats, tasks, num_tasks=len(video.labels) if video else None)
    if video is not None:
        episodes = video.episodes
    else:
        episodes = load_episodes(paths.encoded, tasks, *normalizers_from_stats(stats, tasks), split="train")
    setup = Setup(mode, params, optim, tasks, stats, model, episodes, video=video)
    _initialise(setup, paths.pretrained)
    return setup


class CheckpointStore:
    """``<root>/<step>/{model, training_state.pt}`` and ``<root>/last``."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root, self.fingerprint = root, fingerprint

    def latest(self) -> tuple[Path, dict] | None:
        last = self.root / "last"
        if not last.exists():
            return None
        # Tensors, numbers and strings only: a checkpoint from a shared volume cannot run code.
        state = torch.load(last / "training_state.pt", weights_only=True)
        if state.get("fingerprint") != self.fingerprint:
            aside = self.root.with_name(f"{self.root.name}.stale-{int(time.time())}")
            log.warning("checkpoints in %s were made under another configuration; moved to %s", self.root, aside)
            os.replace(self.root, aside)
            return None
        return last.resolve(), state

    def started_run(self) -> str | None:
        """The MLflow run the last start of this stage opened (``run.json``), if any."""
        path = self.root / "run.json"
        try:
            return json.loads(path.read_text()).get("run_id")
        except (OSError, ValueError, AttributeError):
            return None

    def record_run(self, run_id: str) -> None:
        """Say which MLflow run this start opened, before its first checkpoint exists."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "run.json", {"run_id": run_id})

    def save(self, model: PAR | BCPolicy, training_state: dict[str, Any], run_id: str) -> Path:
        """Write the model and ``training_state`` (``Trainer.state_dict()``) as the newest checkpoint."""
        target = self.root / f"{training_state['step']:06d}"
        with atomic_output(target) as tmp:
            save_model(model, tmp / "model")
            state = {**training_state, "run_id": run_id, "fingerprint": self.fingerprint}
            torch.save(state, tmp / "training_state.pt")
        link = self.root / ".last.tmp"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.name)
        os.replace(link, self.root / "last")
        return target


def fingerprint(setup: Setup) -> str:
    """What a checkpoint must have been made under to be resumed."""
    config: ModelConfig | BCConfig = setup.model.config
    stats = setup.stats
    # nproc 1 is left out: single-process checkpoints made before it existed stay resumable.
    optim = setup.optim.model_dump(exclude={"nproc"} if setup.optim.nproc == 1 else None)
    payload = [setup.mode, config.model_dump(), optim, setup.tasks]
    payload += [stats["latent_mean"], stats["latent_std"], setup.init]
    if setup.video is not None:  # the corpus is not in the latent statistics: its counts are
        payload.append(setup.video.summary())
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def _log_start(mlflow: Any, setup: Setup) -> None:
    """The run's parameters and configuration, logged once (not again on resume)."""
    config = setup.model.config
    mlflow.log_params(
        {
            **_flat("model", config.model_dump()),
            **_flat(setup.mode, setup.optim.model_dump()),
            "tasks": ",".join(setup.tasks),
            "init": setup.init,
            "ablation": setup.params.model.ablation,
            "parameters_m": round(setup.model.num_parameters() / 1e6, 3),
            "train_episodes": len(setup.episodes),
        }
    )
    mlflow.log_text(config.model_dump_json(indent=2), "config/model.json")
    mlflow.log_text(setup.params.model_dump_json(indent=2, by_alias=True), "config/params.json")
    if setup.load_report is not None:
        mlflow.log_text(json.dumps(setup.load_report.__dict__, indent=2), "config/pretrained_load_report.json")


class LossLog:
    """Averages each ``log_every`` steps into one row: history.jsonl, MLflow, the progress line."""

    def __init__(self, path: Path, history: list[dict[str, float]], optim: OptimParams, mlflow: Any) -> None:
        self.path, self.history, self.optim, self.mlflow = path, history, optim, mlflow
        self.window: list[StepResult] = []
        self.progress: Progress | None = None

    def row(self, step: int, lr: float) -> dict[str, float]:
        n, w = len(self.window), self.window
        row = {
            "step": step,
            "loss": sum(r.loss.total.item() for r in w) / n,
            "frame_loss": sum(r.loss.frame.item() for r in w) / n,
            "action_loss": sum(r.loss.action.item() for r in w) / n,
            "lr": lr,
            "grad_norm": sum(r.grad_norm for r in w) / n,
            "steps_per_s": n / sum(r.seconds for r in w),
        }
        row["windows_per_s"] = row["steps_per_s"] * self.optim.batch_size
        return row

    def __call__(self, result: StepResult) -> None:
        self.window.append(result)
        note = None
        if result.step % self.optim.log_every == 0 or result.step == self.optim.steps:
            row = self.row(result.step, result.lr)
            self.history.append(row)
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self.mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=result.step)
            note = f"loss {row['loss']:.4f}, action {row['action_loss']:.4f}"
            self.window.clear()
        if self.progress is not None:
            self.progress.update(note=note)


def _resume(
    store: CheckpointStore, setup: Setup, trainer: Trainer, world: World
) -> tuple[str | None, list[dict[str, float]]]:
    """Continue from the newest checkpoint, if one was made under this configuration:
    its weights and optimizer state, its MLflow run id and its loss history. Rank 0
    picks it (and sets stale ones aside); every rank loads it, each its own data RNG."""
    resumed = store.latest() if world.leader else None
    found = broadcast(world, None if resumed is None else str(resumed[0]))
    run_id = None
    if found is not None:
        path = Path(found)
        state = resumed[1] if resumed is not None else torch.load(path / "training_state.pt", weights_only=True)
        setup.model.load_state_dict(load_model(path / "model").state_dict())
        trainer.load_state_dict(state)
        run_id = state.get("run_id")
        log.info("resuming %s from step %d (%s)", setup.mode, trainer.step, path)
    return run_id, _history(store, trainer.step if found is not None else None) if world.leader else []


def _history(store: CheckpointStore, step: int | None) -> list[dict[str, float]]:
    """The loss rows up to the resumed ``step`` (none when starting afresh), rewritten."""
    history_file = store.root / "history.jsonl"
    history = []
    if step is not None and history_file.exists():
        history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()]
        history = [h for h in history if h["step"] <= step]
    store.root.mkdir(parents=True, exist_ok=True)
    history_file.write_text("".join(json.dumps(h) + "\n" for h in history))
    return history


@torch.no_grad()
def frame_strip(model: PAR, setup: Setup, vae_dir: Path, path: Path, steps: int = 6) -> None:
    """Real frames (top) and one-step predictions from real context (bottom) of the
    first training episode."""
    from par.sampling import Rollout

    was_training, c, video = model.training, model.config, setup.mode == "pretrain"
    episode = setup.episodes[0]
    vae = load_vae(vae_dir)
    mean = torch.tensor(setup.stats["latent_mean"])[:, None, None]
    std = torch.tensor(setup.stats["latent_std"])[:, None, None]
    rollout = Rollout(model, torch.tensor([episode.task]), torch.Generator().manual_seed(0), video=video)
    real, predicted = [], []
    for t in range(steps):
        i = min(t * c.chunk_len, episode.length)
        if i + c.chunk_len > episode.length:
            break
        proprio = None if episode.proprio is None or not c.proprio_dim or video else episode.proprio[i][None]
        rollout.observe(episode.latents[i][None], proprio)
        if not video:
            rollout.commit_actions(episode.actions[i : i + c.chunk_len][None])
        predicted.append(rollout.predict_frame())
        real.append(episode.latents[i + c.chunk_len][None])

    def decode(latents: list[torch.Tensor]) -> torch.Tensor:
        z = torch.cat(latents) * std + mean
        return ((vae.decode(z).sample + 1) / 2).clamp(0, 1)

    if real:
        save_grid(decode(real), decode(predicted), path)
    model.train(was_training)


def _train_steps(
    trainer: Trainer, optim: OptimParams, on_step: LossLog | None, on_checkpoint: Callable[[dict[str, Any]], None]
) -> None:
    """Train to ``optim.steps``, a checkpoint every ``checkpoint_every``. Every rank
    calls this: the training state gathers every rank's data RNG."""
    while trainer.step < optim.steps:
        target = min(optim.steps, (trainer.step // optim.checkpoint_every + 1) * optim.checkpoint_every)
        trainer.run(until=target, on_step=on_step)
        on_checkpoint(trainer.state_dict())


def _checkpointer(
    setup: Setup, store: CheckpointStore, run: Any, paths: FitPaths, mlflow: Any
) -> Callable[[dict[str, Any]], None]:
    """Rank 0's checkpoint: the model and training state, and (PAR) a strip of predicted vs
    real frames, drawn by the checkpoint's own weights on the CPU (also in MLflow)."""

    def save(state: dict[str, Any]) -> None:
        saved = store.save(setup.model, state, run.info.run_id)
        if isinstance(setup.model, PAR):
            strip = paths.checkpoints / "frames" / f"step{state['step']:06d}.png"
            frame_strip(load_model(saved / "model"), setup, paths.encoded / "vae", strip)
            mlflow.log_artifact(str(strip), "frames")

    return save


def _finish(setup: Setup, trainer: Trainer, history: list[dict], seconds: float, run: Any, paths: FitPaths) -> dict:
    """Loss plot, metrics, and the model (pretrain) or policy bundle (train), with EMA weights."""
    import mlflow

    mode, model = setup.mode, setup.model
    plot = paths.plots / f"{mode}_loss.png"
    save_loss_plot(history, plot, f"{mode} loss ({setup.params.model.size}, {', '.join(setup.tasks)})")
    mlflow.log_artifact(str(plot), "plots")
    final = history[-1] if history else {}
    metrics = {
        "steps": setup.optim.steps,
        **{f"final_{k}": round(final.get(k, float("nan")), 5) for k in ("loss", "frame_loss", "action_loss")},
        "seconds_this_run": round(seconds, 1),
        "parameters_m": round(model.num_parameters() / 1e6, 3),
        "mlflow_run_id": run.info.run_id,
    }
    write_json(paths.metrics, metrics)
    model.cpu().load_state_dict(trainer.averaged_state_dict())  # act and predict with the EMA weights
    with atomic_output(paths.out) as tmp:
        if setup.video is not None:
            save_model(model, tmp / "model")
            write_json(tmp / SOURCES, setup.video.record(trainer.sampler.drawn))
            mlflow.log_artifact(str(tmp / SOURCES), "config")
        else:
            extra = {"mlflow_run_id": run.info.run_id, "ablation": setup.params.model.ablation, "init": setup.init}
            save_policy(tmp, model, paths.encoded / "vae", setup.stats, setup.tasks, extra=extra)
    mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    return metrics


def fit(mode: Mode, params: Params, params_path: Path, paths: FitPaths, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the ``mode`` stage to its last step; returns its metrics (rank 0's;
    other torchrun ranks train beside it and return an empty dict)."""
    world = World.from_environment()
    optim: OptimParams = params.pretrain if mode == "pretrain" else params.train
    if skip_reason(mode, params) is None:
        check_world(mode, optim.nproc, optim.device, world)
    distributed.start(world, optim.device)
    # A rank that fails leaves the group as it is (torchrun stops the others): destroying
    # it while another rank waits in a collective would hang that rank.
    metrics = _fit_rank(mode, params, params_path, paths, progress, world)
    distributed.stop(world)
    return metrics


def _fit_rank(
    mode: Mode, params: Params, params_path: Path, paths: FitPaths, progress: bool, world: World
) -> dict[str, Any]:
    setup = prepare(mode, params, paths)
    if setup is None:
        return _write_skipped(skip_reason(mode, params) or "", paths) if world.leader else {"skipped": True}
    pretrained = setup.load_report.taken_names() if setup.load_report else set()
    trainer = Trainer(setup.model, setup.sampler(), train_config(setup.optim), world.shard, pretrained)
    store = CheckpointStore(paths.checkpoints, fingerprint(setup))
    if world.leader:
        return _lead(setup, trainer, store, params_path, paths, progress, world)
    _resume(store, setup, trainer, world)
    _train_steps(trainer, setup.optim, None, lambda state: None)
    return {}


def _lead(
    setup: Setup,
    trainer: Trainer,
    store: CheckpointStore,
    params_path: Path,
    paths: FitPaths,
    progress: bool,
    world: World,
) -> dict[str, Any]:
    """Rank 0 (or the only process): train beside the others, and track, checkpoint and write."""
    from components.integrations.tracking import end_abandoned_run, stage_run

    mode = setup.mode
    started_run = store.started_run()
    run_id, history = _resume(store, setup, trainer, world)
    if started_run and started_run != run_id:  # killed before a checkpoint of its own, or stale
        end_abandoned_run(started_run, "killed before its first checkpoint, or its checkpoints were set aside")
    with stage_run(mode, params_path, run_id, tags={"par.tasks": ",".join(setup.tasks)}) as run:
        import mlflow

        store.record_run(run.info.run_id)
        if run_id is None:
            _log_start(mlflow, setup)
        losses = LossLog(store.root / "history.jsonl", history, setup.optim, mlflow)
        started = time.perf_counter()
        with Progress(mode, setup.optim.steps, "steps", done=trainer.step, enabled=progress) as losses.progress:
            _train_steps(trainer, setup.optim, losses, _checkpointer(setup, store, run, paths, mlflow))
        metrics = _finish(setup, trainer, history, time.perf_counter() - started, run, paths)
    log.info("%s done: %d steps, final loss %.4f; wrote %s", mode, setup.optim.steps, metrics["final_loss"], paths.out)
    return metrics


def run_from_command_line(mode: Mode, argv: list[str] | None, description: str) -> dict[str, Any]:
    """The command line that pretrain and train share (``--pretrained`` for train only)."""
    import argparse

    from components.formats.params import load_params

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--encoded", required=True, type=Path, help="encode's output folder")
    if mode == "train":
        parser.add_argument("--pretrained", type=Path, help="pretrain's output folder")
    parser.add_argument("--out", required=True, type=Path, help="model (pretrain) or policy (train) folder")
    parser.add_argument("--checkpoints", required=True, type=Path, help="checkpoint folder (kept for resuming)")
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--plots", required=True, type=Path, help="folder for the loss curve (PNG and CSV)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    paths = FitPaths(
        args.encoded, args.out, args.checkpoints, args.metrics, args.plots, getattr(args, "pretrained", None)
    )
    params = load_params(args.params)
    optim = params.pretrain if mode == "pretrain" else params.train
    if optim.nproc > 1 and not distributed.launched() and skip_reason(mode, params) is None:
        # Bad input fails here (exit 2), before any rank starts; then this process becomes torchrun.
        prepare(mode, params, paths)
        check_world(mode, optim.nproc, optim.device, World(size=optim.nproc))
        distributed.launch(f"components.{mode}", optim.nproc, sys.argv[1:] if argv is None else argv)
    return fit(mode, params, args.params, paths, progress=not args.no_progress)
