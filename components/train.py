"""train (and pretrain): PAR on encoded demonstrations, tracked in MLflow, resumable.

    python -m components.train --params params.yaml --encoded data/encoded \\
        --pretrained data/pretrained --out data/policy --checkpoints outputs/train/checkpoints \\
        --metrics metrics/train.json --plots plots/train

``--mode pretrain`` (what ``python -m components.pretrain`` runs) trains the same
network on frame-only windows of every task's frames (video pretraining) and writes
the model; ``--mode train`` trains on physical tokens, initialised from the
pretrained model unless the ablation is ``no_video_pretrain``, and writes a policy
bundle (components.policy).

Checkpoints: ``<checkpoints>/<step>/{model/, training_state.pt}`` plus ``last`` (a
link to the newest). Training state holds the optimizer, the data/noise RNG, the
step and the MLflow run id. Rerun after a kill and training resumes from ``last``,
continues the same MLflow run, and ends with the same weights as an uninterrupted
run. Checkpoints made under another configuration are set aside, not resumed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from components.common import ComponentError, atomic_output, log, run_cli, write_json
from components.encode import load_stats
from components.latents import load_episodes, load_task_arrays
from components.params import ModelParams, OptimParams, Params, load_params
from components.policy import Normalizer, normalizers_from_stats, save_policy
from par.baseline import BCConfig, BCPolicy
from par.checkpoint import load_model, load_pretrained, save_model
from par.config import ModelConfig, apply_ablation, model_config
from par.data import Episode, WindowSampler
from par.model import PAR
from par.training import StepResult, TrainConfig, Trainer

Mode = Literal["pretrain", "train"]


def build_model(params: ModelParams, stats: dict[str, Any], tasks: list[str]) -> PAR | BCPolicy:
    if params.kind == "bc":
        return BCPolicy(build_bc_config(params, stats, tasks))
    return PAR(build_model_config(params, stats, tasks))


def _data_shape(params: ModelParams, stats: dict[str, Any], tasks: list[str]) -> dict[str, int]:
    C, h, w = stats["latent_shape"]
    manifests = [stats["manifests"][t] for t in tasks]
    action_dims = {m["action_dim"] for m in manifests}
    if len(action_dims) != 1:
        raise ComponentError(f"tasks {tasks} have different action sizes {sorted(action_dims)}")
    return dict(
        latent_channels=C,
        latent_height=h,
        latent_width=w,
        action_dim=action_dims.pop(),
        proprio_dim=manifests[0]["proprio_dim"] if params.use_proprio else 0,
        num_tasks=len(tasks),
    )


def build_bc_config(params: ModelParams, stats: dict[str, Any], tasks: list[str]) -> BCConfig:
    try:
        return BCConfig(**{**_data_shape(params, stats, tasks), **params.overrides})
    except ValueError as exc:
        raise ComponentError(f"model parameters do not make a valid baseline: {exc}") from exc


def build_model_config(params: ModelParams, stats: dict[str, Any], tasks: list[str]) -> ModelConfig:
    """A named size, shaped by the data (latents, actions, proprio, tasks) and the ablation."""
    shaped = dict(_data_shape(params, stats, tasks), patch_size=params.patch_size)
    try:
        config = model_config(params.size, **{**shaped, **params.overrides})
    except ValueError as exc:
        raise ComponentError(f"model parameters do not make a valid PAR: {exc}") from exc
    return apply_ablation(config, params.ablation)


def train_config(params: OptimParams) -> TrainConfig:
    fields = TrainConfig.model_fields
    return TrainConfig(**{k: v for k, v in params.model_dump().items() if k in fields})


def _video_episodes(encoded: Path, tasks: list[str], extra: list[str]) -> list[Episode]:
    """Every training frame of the tasks, plus extra frame-only latents, as video episodes."""
    identity = Normalizer(np.zeros(1, np.float32), np.ones(1, np.float32))
    episodes = load_episodes(encoded, tasks, identity, identity, "train")
    for folder in extra:
        for path in sorted((Path(folder) / "latents").glob("*.npz")):
            arrays = load_task_arrays(folder, path.stem)
            offsets = arrays["frame_offsets"]
            for e in range(len(offsets) - 1):
                latents = torch.from_numpy(arrays["latents"][offsets[e] : offsets[e + 1]])
                episodes.append(Episode(task=0, latents=latents, actions=torch.zeros(len(latents) - 1, 1)))
    # Video windows carry no task-specific signal beyond the frames; keep task ids.
    return episodes


class CheckpointStore:
    """``<root>/<step>/{model, training_state.pt}`` and ``<root>/last``."""

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.root, self.fingerprint = root, fingerprint

    def latest(self) -> tuple[Path, dict] | None:
        last = self.root / "last"
        if not last.exists():
            return None
        state = torch.load(last / "training_state.pt", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            aside = self.root.with_name(f"{self.root.name}.stale-{int(time.time())}")
            log.warning("checkpoints in %s were made under another configuration; moved to %s", self.root, aside)
            os.replace(self.root, aside)
            return None
        return last.resolve(), state

    def save(self, model: PAR, trainer: Trainer, run_id: str) -> Path:
        target = self.root / f"{trainer.step:06d}"
        with atomic_output(target) as tmp:
            save_model(model, tmp / "model")
            torch.save(
                {**trainer.state_dict(), "run_id": run_id, "fingerprint": self.fingerprint}, tmp / "training_state.pt"
            )
        link = self.root / ".last.tmp"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target.name)
        os.replace(link, self.root / "last")
        return target


def fingerprint(
    mode: str, config: ModelConfig | BCConfig, optim: OptimParams, tasks: list[str], stats: dict, init: str
) -> str:
    payload = json.dumps(
        [mode, config.model_dump(), optim.model_dump(), tasks, stats["latent_mean"], stats["latent_std"], init],
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _flat(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def save_loss_plot(history: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "frame_loss", "action_loss"):
        values = [h[key] for h in history]
        if any(values):
            ax.plot(steps, values, label=key)
    if history:
        ax.set_yscale("log")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def frame_strip(
    model: PAR, vae_dir: Path, stats: dict[str, Any], episode: Episode, path: Path, video: bool, steps: int = 6
) -> None:
    """Real frames (top) and one-step predictions from real context (bottom) of an episode."""
    from diffusers import AutoencoderKL

    from components.encode import save_grid
    from par.sampling import Rollout

    was_training = model.training
    c = model.config
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    mean = torch.tensor(stats["latent_mean"])[:, None, None]
    std = torch.tensor(stats["latent_std"])[:, None, None]
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


def run(
    mode: Mode,
    params: Params,
    params_path: Path,
    encoded: Path,
    out: Path,
    checkpoints: Path,
    metrics_path: Path,
    plots: Path,
    pretrained: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    from tqdm import tqdm

    from components.tracking import stage_run

    stats = load_stats(encoded)
    tasks = list(params.tasks)
    missing = [t for t in tasks if t not in stats["tasks"]]
    if missing:
        raise ComponentError(f"tasks {missing} are not in the encoded data {encoded} (it has {stats['tasks']})")
    optim: OptimParams = params.pretrain if mode == "pretrain" else params.train
    torch.manual_seed(optim.seed)  # initial weights: part of "the same seed gives the same model"
    model = build_model(params.model, stats, tasks)
    config = model.config
    if mode == "pretrain" and (params.model.kind == "bc" or not params.pretrain.enabled):
        reason = "the baseline has no video mode" if params.model.kind == "bc" else "pretrain.enabled is false"
        marker = {"skipped": True, "reason": reason}
        with atomic_output(out) as tmp:
            write_json(tmp / "SKIPPED.json", marker)
        # dvc.yaml declares the checkpoint folder an output: it must exist after the stage.
        checkpoints.mkdir(parents=True, exist_ok=True)
        write_json(checkpoints / "SKIPPED.json", marker)
        write_json(metrics_path, marker)
        save_loss_plot([], plots / "pretrain_loss.png", f"pretrain skipped: {reason}")
        log.info("pretrain skipped: %s", reason)
        return {"skipped": True}
    if mode == "pretrain":
        episodes = _video_episodes(encoded, tasks, list(params.pretrain.extra_latents))
    else:
        episodes = load_episodes(encoded, tasks, *normalizers_from_stats(stats, tasks), split="train")
    sampler = WindowSampler(
        episodes, config.context_steps, config.chunk_len, video=mode == "pretrain", balance_tasks=optim.balance_tasks
    )

    init = "scratch"
    load_report = None
    wants_pretrained = params.model.kind == "par" and params.model.ablation != "no_video_pretrain"
    if mode == "train" and wants_pretrained and params.pretrain.enabled:
        if pretrained is None or not (pretrained / "model").is_dir():
            raise ComponentError(
                f"pretrained model {pretrained} not found: run pretrain first, or set model.ablation: no_video_pretrain"
            )
        load_report = load_pretrained(model, pretrained / "model")
        weights = (pretrained / "model" / "model.safetensors").read_bytes()
        init = f"video-pretrained:{hashlib.sha256(weights).hexdigest()[:16]}"
        log.info("video-pretrained weights: %s", load_report.summary())
    trainer = Trainer(model, sampler, train_config(optim))
    store = CheckpointStore(checkpoints, fingerprint(mode, config, optim, tasks, stats, init))
    resumed = store.latest()
    run_id = None
    if resumed is not None:
        path, state = resumed
        model.load_state_dict(load_model(path / "model").state_dict())
        trainer.load_state_dict(state)
        run_id = state.get("run_id")
        log.info("resuming %s from step %d (%s)", mode, trainer.step, path)

    history: list[dict[str, float]] = []
    history_file = checkpoints / "history.jsonl"
    if resumed is not None and history_file.exists():
        history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()]
        history = [h for h in history if h["step"] <= trainer.step]
    checkpoints.mkdir(parents=True, exist_ok=True)
    history_file.write_text("".join(json.dumps(h) + "\n" for h in history))
    with stage_run(mode, params_path, run_id, tags={"par.tasks": ",".join(tasks)}) as mlrun:
        import mlflow

        if resumed is None:
            mlflow.log_params(
                {
                    **_flat("model", config.model_dump()),
                    **_flat(mode, optim.model_dump()),
                    "tasks": ",".join(tasks),
                    "init": init,
                    "ablation": params.model.ablation,
                    "parameters_m": round(model.num_parameters() / 1e6, 3),
                    "train_episodes": len(episodes),
                }
            )
            mlflow.log_text(config.model_dump_json(indent=2), "config/model.json")
            mlflow.log_text(params.model_dump_json(indent=2, by_alias=True), "config/params.json")
            if load_report is not None:
                mlflow.log_text(json.dumps(load_report.__dict__, indent=2), "config/pretrained_load_report.json")
        bar = tqdm(total=optim.steps, initial=trainer.step, desc=mode, disable=not progress, mininterval=2, unit="step")
        window: list[StepResult] = []
        started = time.perf_counter()

        def on_step(result: StepResult) -> None:
            window.append(result)
            bar.update(1)
            if result.step % optim.log_every == 0 or result.step == optim.steps:
                n = len(window)
                row = {
                    "step": result.step,
                    "loss": sum(r.loss.total.item() for r in window) / n,
                    "frame_loss": sum(r.loss.frame.item() for r in window) / n,
                    "action_loss": sum(r.loss.action.item() for r in window) / n,
                    "lr": result.lr,
                    "grad_norm": sum(r.grad_norm for r in window) / n,
                    "steps_per_s": n / sum(r.seconds for r in window),
                }
                row["windows_per_s"] = row["steps_per_s"] * optim.batch_size
                history.append(row)
                with history_file.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                mlflow.log_metrics({k: v for k, v in row.items() if k != "step"}, step=result.step)
                bar.set_postfix(loss=f"{row['loss']:.4f}", act=f"{row['action_loss']:.4f}")
                if not progress:
                    elapsed = time.perf_counter() - started
                    eta = elapsed / max(1, len(history)) * (optim.steps - result.step) / optim.log_every
                    log.info(
                        "%s step %d/%d loss %.4f (frame %.4f action %.4f) eta %.0f s",
                        mode,
                        result.step,
                        optim.steps,
                        row["loss"],
                        row["frame_loss"],
                        row["action_loss"],
                        eta,
                    )
                window.clear()

        while trainer.step < optim.steps:
            target = min(optim.steps, (trainer.step // optim.checkpoint_every + 1) * optim.checkpoint_every)
            trainer.run(until=target, on_step=on_step)
            store.save(model, trainer, mlrun.info.run_id)
            if isinstance(model, PAR):  # predicted vs real frames at every eval point
                strip = plots / f"{mode}_frames_step{trainer.step:06d}.png"
                frame_strip(model.cpu(), encoded / "vae", stats, episodes[0], strip, video=mode == "pretrain")
                model.to(trainer.device)
                mlflow.log_artifact(str(strip), "frames")
        bar.close()
        seconds = time.perf_counter() - started

        plot = plots / f"{mode}_loss.png"
        save_loss_plot(history, plot, f"{mode} loss ({params.model.size}, {', '.join(tasks)})")
        mlflow.log_artifact(str(plot), "plots")
        final = history[-1] if history else {}
        metrics = {
            "steps": optim.steps,
            "final_loss": round(final.get("loss", float("nan")), 5),
            "final_frame_loss": round(final.get("frame_loss", float("nan")), 5),
            "final_action_loss": round(final.get("action_loss", float("nan")), 5),
            "seconds_this_run": round(seconds, 1),
            "parameters_m": round(model.num_parameters() / 1e6, 3),
            "mlflow_run_id": mlrun.info.run_id,
        }
        write_json(metrics_path, metrics)
        model.cpu().load_state_dict(trainer.averaged_state_dict())  # act and predict with the EMA weights
        with atomic_output(out) as tmp:
            if mode == "pretrain":
                save_model(model, tmp / "model")
            else:
                save_policy(
                    tmp,
                    model,
                    encoded / "vae",
                    stats,
                    tasks,
                    extra={"mlflow_run_id": mlrun.info.run_id, "ablation": params.model.ablation, "init": init},
                )
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
    log.info("%s done: %d steps, final loss %.4f; wrote %s", mode, optim.steps, metrics["final_loss"], out)
    return metrics


def main(argv: list[str] | None = None, mode: Mode | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if mode is None:
        parser.add_argument("--mode", choices=["pretrain", "train"], default="train")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--encoded", required=True, type=Path, help="encode's output folder")
    parser.add_argument("--pretrained", type=Path, help="pretrain's output folder (train mode)")
    parser.add_argument("--out", required=True, type=Path, help="model (pretrain) or policy (train) folder")
    parser.add_argument("--checkpoints", required=True, type=Path, help="checkpoint folder (kept for resuming)")
    parser.add_argument("--metrics", required=True, type=Path)
    parser.add_argument("--plots", required=True, type=Path, help="folder for the loss plot")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    run(
        mode or args.mode,
        params,
        args.params,
        args.encoded,
        args.out,
        args.checkpoints,
        args.metrics,
        args.plots,
        args.pretrained,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
