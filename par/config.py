"""Typed configuration of the PAR model.

Every config is a frozen pydantic model with ``extra="forbid"``: an unknown or
ill-typed key is an error that names it. The config is saved inside every
checkpoint, so a model can always be rebuilt from its weights file alone.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class _Frozen(BaseModel):
    # NaN and infinity are no configuration: every comparison with NaN is false.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DiffusionConfig(_Frozen):
    """Noise schedule of one diffusion de-tokenizer (diffusers schedulers)."""

    num_train_timesteps: PositiveInt = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    # Fast sampler used at inference; DDPM (the training process) is used for noising.
    sampler: Literal["ddim", "ddpm", "dpmsolver"] = "ddim"
    num_inference_steps: PositiveInt = 20
    # Several (t, noise) draws per token in training: cheap extra signal, since the
    # head is small next to the transformer whose output it reuses (MAR, NOVA, PAR).
    timesteps_per_token: PositiveInt = 4
    # Samples are clipped to [-clip, clip] while sampling; None disables clipping.
    clip_sample: float | None = Field(default=None, gt=0)
    # Where the sampler's timesteps sit. "trailing" starts at the last training step,
    # where squaredcos_cap_v2 leaves almost no signal (alpha_bar ~ 0): an epsilon
    # model's first x0 estimate is then divided by ~0 and blows up. "leading" starts
    # one stride earlier (alpha_bar 0.006 at t=950 of 1000), as DDIM is usually run.
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"

    @model_validator(mode="after")
    def _check_steps(self) -> DiffusionConfig:
        if self.num_inference_steps > self.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps ({self.num_inference_steps}) must not exceed "
                f"num_train_timesteps ({self.num_train_timesteps})"
            )
        return self


class FrameHeadConfig(_Frozen):
    """Per-token DiT-style diffusion head for frame latent tokens (AdaLN-zero MLP)."""

    width: PositiveInt = 256
    depth: PositiveInt = 3
    diffusion: DiffusionConfig = DiffusionConfig(clip_sample=None)


class ActionHeadConfig(_Frozen):
    """Action de-tokenizer: a small DiT with cross-attention, or discrete bins."""

    kind: Literal["diffusion", "discrete"] = "diffusion"
    width: PositiveInt = 256
    depth: PositiveInt = 3
    n_heads: PositiveInt = 4
    # Bins per action dimension for kind="discrete" (actions live in [-1, 1]).
    num_bins: int = Field(default=256, ge=2)
    diffusion: DiffusionConfig = DiffusionConfig(num_train_timesteps=100, num_inference_steps=10, clip_sample=1.0)

    @model_validator(mode="after")
    def _check_heads(self) -> ActionHeadConfig:
        if self.width % self.n_heads:
            raise ValueError(
                f"action_head.width ({self.width}) must be divisible by action_head.n_heads ({self.n_heads})"
            )
        return self


class ModelConfig(_Frozen):
    """The whole PAR network. Shapes in tokens unless a unit is named."""

    # Frame latents from the VAE (normalised): channels x height x width.
    latent_channels: PositiveInt = 4
    latent_height: PositiveInt = 8
    latent_width: PositiveInt = 8
    # Latents are cut into patch_size x patch_size patches, one token each.
    patch_size: PositiveInt = 2
    # Action vector size (pd_joint_pos: 7 joints + gripper) and chunk length L.
    action_dim: PositiveInt = 8
    chunk_len: PositiveInt = 8
    # Proprioception (proprio) size, one token per step; 0 disables the token.
    proprio_dim: int = Field(default=9, ge=0)
    # Learned task embedding: num_tasks tasks, task_tokens tokens each.
    num_tasks: PositiveInt = 3
    task_tokens: PositiveInt = 1
    # Physical steps (frame + chunk) in the context window.
    context_steps: PositiveInt = 5
    d_model: PositiveInt = 256
    n_layers: PositiveInt = 6
    n_heads: PositiveInt = 8
    mlp_ratio: float = Field(default=4.0, gt=0)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    rope_base: float = Field(default=10000.0, gt=1)
    frame_head: FrameHeadConfig = FrameHeadConfig()
    action_head: ActionHeadConfig = ActionHeadConfig()
    # Ablation PAR-NoAR: the context is the current step only (no history).
    no_ar: bool = False
    frame_loss_weight: float = Field(default=1.0, ge=0)
    action_loss_weight: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _check_dims(self) -> ModelConfig:
        for name in ("latent_height", "latent_width"):
            value = getattr(self, name)
            if value % self.patch_size:
                raise ValueError(f"{name} ({value}) must be divisible by patch_size ({self.patch_size})")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model / n_heads ({self.d_model // self.n_heads}) must be even for RoPE")
        return self

    # Derived sizes -------------------------------------------------------------
    @property
    def frame_tokens(self) -> int:
        """Tokens a frame: (H / p) * (W / p)."""
        return (self.latent_height // self.patch_size) * (self.latent_width // self.patch_size)

    @property
    def token_dim(self) -> int:
        """Values in one frame token: C * p * p."""
        return self.latent_channels * self.patch_size**2

    @property
    def state_tokens(self) -> int:
        return 1 if self.proprio_dim > 0 else 0

    @property
    def step_tokens(self) -> int:
        """Tokens of one physical step: frame, state, begin-of-action, action chunk."""
        return self.frame_tokens + self.state_tokens + 1 + self.chunk_len

    @property
    def context_tokens(self) -> int:
        """Length of a full context window: task tokens + context_steps steps."""
        return self.task_tokens + self.context_steps * self.step_tokens

    @property
    def window_steps(self) -> int:
        """Steps the model may see at once (1 under the no_ar ablation)."""
        return 1 if self.no_ar else self.context_steps


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    steps: PositiveInt = 1000
    batch_size: PositiveInt = 32
    lr: float = Field(default=3e-4, gt=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.05, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    seed: int = 0
    # Threads for torch on the CPU; 0 keeps torch's default.
    threads: int = Field(default=0, ge=0)
    # "auto" picks CUDA when available. On a GPU, bf16 autocast is used (fp32 on the CPU,
    # which has no fast bf16 units here). Data and noise are drawn on the CPU either way,
    # so a run's randomness does not depend on the device.
    device: str = "auto"
    # Exponential moving average of the weights (0 disables it); the EMA weights are the
    # ones a caller should save and act with. Warm-up: decay min(ema, (1 + s) / (10 + s)).
    ema_decay: float = Field(default=0.999, ge=0, lt=1)
    # For the first N steps the weights taken from video pretraining stay as they are
    # (their learning rate is 0; the gradient clip sees the other weights only) and the
    # new parts, the action head and tokenizer, learn alone against that backbone; from
    # step N on everything trains. 0: nothing is held (a run without pretrained weights
    # holds nothing either way).
    freeze_pretrained_steps: int = Field(default=0, ge=0)


# Named sizes. ``tiny`` trains in minutes on a 2-core CPU; ``small`` is an hour-scale
# CPU run; ``base`` is meant for one GPU; ``paper`` reproduces the paper's context
# layout (256 instruction tokens + 5 steps x (360 frame + 8 action tokens), with one
# begin-of-action token per step) at roughly its 732M-parameter scale.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        d_model=128,
        n_layers=4,
        n_heads=4,
        context_steps=4,
        frame_head=dict(width=128, depth=2),
        action_head=dict(width=128, depth=2, n_heads=4),
    ),
    "small": dict(
        d_model=384,
        n_layers=8,
        n_heads=6,
        context_steps=5,
        frame_head=dict(width=256, depth=3),
        action_head=dict(width=256, depth=3, n_heads=4),
    ),
    "base": dict(
        d_model=768,
        n_layers=12,
        n_heads=12,
        context_steps=5,
        frame_head=dict(width=768, depth=6),
        action_head=dict(width=512, depth=6, n_heads=8),
    ),
    "paper": dict(
        latent_channels=16,
        latent_height=60,
        latent_width=96,
        patch_size=4,
        proprio_dim=0,
        task_tokens=256,
        context_steps=5,
        d_model=1536,
        n_layers=24,
        n_heads=16,
        frame_head=dict(width=768, depth=6),
        action_head=dict(width=768, depth=4, n_heads=12),
    ),
}

ABLATIONS = ("none", "no_ar", "discrete_actions", "no_video_pretrain")


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def model_config(size: str = "tiny", **overrides: Any) -> ModelConfig:
    """Build a named size, with nested overrides (dicts merge into sub-configs)."""
    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}; choose one of {sorted(SIZES)}")
    return ModelConfig.model_validate(_merge(SIZES[size], overrides))


def apply_ablation(config: ModelConfig, ablation: str) -> ModelConfig:
    """Return the config of an ablation. ``no_video_pretrain`` changes training only."""
    if ablation not in ABLATIONS:
        raise ValueError(f"unknown ablation {ablation!r}; choose one of {list(ABLATIONS)}")
    data = config.model_dump()
    if ablation == "no_ar":
        data["no_ar"] = True
    elif ablation == "discrete_actions":
        data["action_head"]["kind"] = "discrete"
    return ModelConfig.model_validate(data)
