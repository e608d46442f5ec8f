"""PAR or the behaviour-cloning baseline, built from params and the data's shape (latent
grid, action and proprio sizes, number of tasks), as every stage that makes one needs it."""

from __future__ import annotations

from typing import Any

from components.errors import ComponentError
from components.formats.params import ModelParams, OptimParams
from par.baseline import BCConfig, BCPolicy
from par.config import ModelConfig, apply_ablation, model_config
from par.model import PAR
from par.training import TrainConfig


def data_shape(
    params: ModelParams, stats: dict[str, Any], tasks: list[str], num_tasks: int | None = None
) -> dict[str, int]:
    """What the encoded data decides of a network (``stats``: encode's stats.json);
    ``num_tasks`` when it conditions on more labels than ``tasks`` (video pretraining
    on other tasks' clips: components.ml.video_data)."""
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
        num_tasks=num_tasks or len(tasks),
    )


def build_bc_config(params: ModelParams, stats: dict[str, Any], tasks: list[str]) -> BCConfig:
    try:
        return BCConfig(**{**data_shape(params, stats, tasks), **params.overrides})
    except ValueError as exc:
        raise ComponentError(f"model parameters do not make a valid baseline: {exc}") from exc


def build_model_config(
    params: ModelParams, stats: dict[str, Any], tasks: list[str], num_tasks: int | None = None
) -> ModelConfig:
    """A named size, shaped by the data (latents, actions, proprio, tasks) and the ablation."""
    shaped = dict(data_shape(params, stats, tasks, num_tasks), patch_size=params.patch_size)
    try:
        config = model_config(params.size, **{**shaped, **params.overrides})
    except ValueError as exc:
        raise ComponentError(f"model parameters do not make a valid PAR: {exc}") from exc
    return apply_ablation(config, params.ablation)


def build_model(
    params: ModelParams, stats: dict[str, Any], tasks: list[str], num_tasks: int | None = None
) -> PAR | BCPolicy:
    if params.kind == "bc":
        return BCPolicy(build_bc_config(params, stats, tasks))
    return PAR(build_model_config(params, stats, tasks, num_tasks))


def train_config(params: OptimParams) -> TrainConfig:
    """The optimisation fields of a training stage's params, as par.training takes them."""
    fields = TrainConfig.model_fields
    return TrainConfig(**{k: v for k, v in params.model_dump().items() if k in fields})
