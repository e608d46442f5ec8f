"""params.yaml, validated: one pydantic model per section, unknown keys rejected.

Every component reads the file through :func:`load_params`, so a typo anywhere in
params.yaml is an error that names its path (``collect.camera.widht``) before any
work starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

from components.errors import ComponentError
from par.config import TrainConfig

HAND_CAMERA_ROBOT = "panda_wristcam"
# Per-task mappings (section, key): their keys must be listed tasks.
BY_TASK = (("collect", "demos_by_task"), ("collect", "camera_by_task"), ("gate", "min_wilson_low"))
# What a proprio vector can hold (components.integrations.maniskill.proprio_of), and what it holds by
# default: also the layout of manifests and policies that do not record one.
ProprioPart = Literal["qpos", "goal_pos", "tcp_to_goal"]
DEFAULT_PROPRIO: tuple[ProprioPart, ...] = ("qpos", "goal_pos")


def _distinct(values: list[str], what: str, noun: str) -> list[str]:
    """``values``, if it names at least one ``noun`` and none twice."""
    if not values:
        raise ValueError(f"{what} must name at least one {noun}")
    if len(set(values)) != len(values):
        raise ValueError(f"{what} names a {noun} twice: {values}")
    return values


class Section(BaseModel):
    # NaN and infinity are refused everywhere: every comparison with NaN is false, so a
    # NaN threshold would pass every check.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CameraParams(Section):
    name: str = "base_camera"
    width: PositiveInt = 64
    height: PositiveInt = 64
    # "minimal" is what a plain gym.make renders with; training and evaluation frames
    # must come from the same shader, so it is recorded in the manifest.
    shader: str = "minimal"
    # Where the camera looks from and at (metres, world frame) and its vertical field of
    # view (radians); None keeps the task's own camera. ManiSkill's tabletop camera sees
    # the robot from the front with a 90-degree view, so at 64x64 a 4 cm cube is 2-3
    # pixels; a closer, narrower view gives the same pixels to the workspace.
    eye: tuple[float, float, float] | None = None
    target: tuple[float, float, float] | None = None
    fov: float | None = Field(default=None, gt=0.0, lt=3.1)
    # Also the camera on the Panda's hand (robot_uids: panda_wristcam), same size and
    # shader, tiled to the right of this one: a frame is then H x 2W. At 64x64 the base
    # view shows a cube as 4-5 pixels; the hand camera sees the grasp at full size.
    hand_camera: bool = False
    # Show the goal markers a task hides from its cameras (PickCube's goal sphere, 5 cm
    # across): a policy, and a video prior, can then see where the cube goes instead of
    # reading it from proprio alone. ManiSkill shows them to its human render camera only.
    show_goal: bool = False

    def manifest(self) -> dict[str, Any]:
        """The camera as manifests and policies record it. Options left at None, and
        switches when off, are left out: the default camera's entry is the same as
        before they existed, so older policies still match newer datasets."""
        off = {name for name in ("hand_camera", "show_goal") if not getattr(self, name)}
        return self.model_dump(exclude_none=True, exclude=off or None)

    @model_validator(mode="after")
    def _eye_needs_target(self) -> CameraParams:
        if (self.eye is None) != (self.target is None):
            raise ValueError("eye and target go together: give both or neither")
        _has_direction(self.eye, self.target)
        return self


def _has_direction(eye: tuple[float, ...] | None, target: tuple[float, ...] | None) -> None:
    if eye is not None and eye == target:
        raise ValueError(f"eye and target are the same point {list(eye)}: the camera has no direction")


class CameraView(Section):
    """Where one task's camera looks from and at (``collect.camera_by_task``). The frame's
    size, shader and hand camera stay ``collect.camera``'s: every task's frames keep one
    shape, one VAE and one token grid, so one multi-task model reads them all."""

    eye: tuple[float, float, float]
    target: tuple[float, float, float]
    fov: float | None = Field(default=None, gt=0.0, lt=3.1)  # None keeps collect.camera's

    @model_validator(mode="after")
    def _looks_somewhere(self) -> CameraView:
        _has_direction(self.eye, self.target)
        return self


class CollectParams(Section):
    demos_per_task: PositiveInt = 100
    # Tasks that need more (or fewer) demos than demos_per_task, e.g. {StackCube-v1: 600}:
    # StackCube's cubes spawn over six times PickCube's area (experiments/stackcube-why-stalls).
    demos_by_task: dict[str, PositiveInt] = {}
    seed_start: int = Field(default=0, ge=0)
    # Give up after this many planner attempts per requested demo.
    max_attempts_per_demo: float = Field(default=3.0, ge=1)
    control_mode: str = "pd_joint_pos"
    robot_uids: str = "panda"  # one camera on every task (StackCube's default adds a wrist camera)
    camera: CameraParams = CameraParams()
    # Tasks seen from elsewhere than camera, e.g. a closer view of PickCube's cube where
    # PushCube needs its goal in frame: {PickCube-v1: {eye: [...], target: [...], fov: 0.7}}.
    camera_by_task: dict[str, CameraView] = {}
    # Planner processes; 1 = in-process.
    workers: PositiveInt = 1
    sim_backend: Literal["physx_cpu", "cpu", "auto"] = "physx_cpu"
    # The proprio vector, in order (components.integrations.maniskill.proprio_of): joint positions,
    # the goal the camera cannot see, and that goal relative to the gripper.
    proprio: list[ProprioPart] = list(DEFAULT_PROPRIO)

    @field_validator("proprio")
    @classmethod
    def _proprio_parts_once(cls, parts: list[str]) -> list[str]:
        return _distinct(parts, "proprio", "part")

    def demos_for(self, task: str) -> int:
        return self.demos_by_task.get(task, self.demos_per_task)

    def camera_for(self, task: str) -> CameraParams:
        """``camera``, moved where ``camera_by_task`` places ``task``'s view."""
        view = self.camera_by_task.get(task)
        if view is None:
            return self.camera
        return CameraParams(**{**self.camera.model_dump(), **view.model_dump(exclude_none=True)})

    @model_validator(mode="after")
    def _hand_camera_needs_its_robot(self) -> CollectParams:
        if self.camera.hand_camera and self.robot_uids != HAND_CAMERA_ROBOT:
            raise ValueError(
                f"camera.hand_camera needs robot_uids: {HAND_CAMERA_ROBOT} (the Panda with a camera on its "
                f"hand), got {self.robot_uids!r}"
            )
        return self


class ValidateParams(Section):
    min_episode_steps: PositiveInt = 10
    max_episode_steps: PositiveInt = 400
    # Fraction of pixels allowed at exactly 0 or 255 in a frame (dead or blown-out camera).
    max_saturated_fraction: float = Field(default=0.5, ge=0, le=1)


class VAEParams(Section):
    # diffusers AutoencoderKL architecture: one down block per entry of block_channels;
    # the spatial downsampling is 2 ** (len(block_channels) - 1).
    block_channels: list[PositiveInt] = [16, 32, 64]
    layers_per_block: PositiveInt = 1
    latent_channels: PositiveInt = 4
    # Self-attention in the VAE's middle block (costly on a CPU at small sizes).
    mid_block_attention: bool = False
    norm_num_groups: PositiveInt = 16
    steps: PositiveInt = 600
    batch_size: PositiveInt = 16
    lr: float = Field(default=2e-3, gt=0)
    kl_weight: float = Field(default=1e-6, ge=0)
    # Hard-pixel term: the loss adds hard_pixel_weight x the mean squared error of each
    # frame's worst hard_pixel_fraction of pixels. Small objects (a cube of a few
    # pixels) carry almost no weight in a plain MSE and get blurred away; they are
    # exactly the pixels the VAE gets most wrong. 0 turns the term off.
    hard_pixel_weight: float = Field(default=0.0, ge=0)
    hard_pixel_fraction: float = Field(default=0.02, gt=0, le=1)
    seed: int = 0

    @field_validator("block_channels")
    @classmethod
    def _non_empty(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("block_channels must list at least one block")
        return value


class EncodeParams(Section):
    # "train": fit the VAE below on the collected frames; "load": use pretrained_path.
    vae_source: Literal["train", "load"] = "train"
    pretrained_path: str | None = None
    vae: VAEParams = VAEParams()
    # What a trained VAE fits, when there is a video corpus: the demos' frames and the
    # corpus's, or the demos' alone (the corpus is encoded by it either way; docs/videos.md).
    vae_frames: Literal["demos_and_corpus", "demos"] = "demos_and_corpus"
    # Episodes held out (per task, the last ones) for reconstruction metrics.
    holdout_episodes: int = Field(default=2, ge=0)
    batch_size: PositiveInt = 64


class ModelParams(Section):
    """The network: PAR (a named size of par.config) or the behaviour-cloning baseline,
    plus what the data decides (latent shape, action and proprio sizes, tasks)."""

    kind: Literal["par", "bc"] = "par"
    size: Literal["tiny", "small", "base", "paper"] = "tiny"
    # Latent patch side; 16x16 latents with patch 4 give 16 tokens a frame.
    patch_size: PositiveInt = 4
    use_proprio: bool = True
    ablation: Literal["none", "no_ar", "discrete_actions", "no_video_pretrain"] = "none"
    # Nested overrides of par.config.ModelConfig, or of par.baseline.BCConfig for kind "bc"
    # (validated there, unknown keys rejected).
    overrides: dict[str, Any] = {}


class OptimParams(TrainConfig):
    """One training stage: par.training.TrainConfig (its fields and checks) plus the
    pipeline's checkpoint and logging cadence; defaults tuned for PAR-tiny on a CPU."""

    steps: PositiveInt = 2000
    lr: float = Field(default=1e-3, gt=0)
    min_lr_ratio: float = Field(default=0.05, ge=0, le=1)
    checkpoint_every: PositiveInt = 500
    log_every: PositiveInt = 25
    # Draw every task equally often (then every env step within it) instead of every env
    # step of all tasks equally: with 600 StackCube demos beside 150 of the others, steps
    # alone would give StackCube three quarters of the updates (par.data.WindowSampler).
    # Measured once, all-tasks with 600
    # StackCube demos (experiments/all-tasks-stack600): PickCube fell, so no profile sets it.
    balance_tasks: bool = False
    # Training processes on this machine (torchrun, DistributedDataParallel: one GPU each
    # on a GPU machine, gloo on the CPU); each trains on batch_size / nproc windows of every
    # batch, so the batch, and the run's result, stay those of one process.
    nproc: PositiveInt = 1

    @model_validator(mode="after")
    def _batch_splits_over_processes(self) -> OptimParams:
        if self.batch_size % self.nproc:
            raise ValueError(
                f"batch_size {self.batch_size} does not split over nproc {self.nproc} processes: "
                "choose a batch_size that nproc divides"
            )
        return self


DEMOS = "demos"  # pretrain.mix's name for the training frames of the run's own demos


class PretrainParams(OptimParams):
    enabled: bool = True
    # Where pretraining takes its frame-only windows, and how often: ``demos`` (the
    # training frames of the run's demos) and any source of ``videos.sources``, each
    # drawn with probability weight / total, then every frame of it equally likely.
    mix: dict[str, float] = Field(default_factory=lambda: {DEMOS: 1.0})

    @field_validator("mix")
    @classmethod
    def _weights(cls, mix: dict[str, float]) -> dict[str, float]:
        negative = sorted(name for name, weight in mix.items() if weight < 0)
        if negative:
            raise ValueError(f"weights must be >= 0, got {[f'{n}: {mix[n]}' for n in negative]}")
        if not any(weight > 0 for weight in mix.values()):
            raise ValueError(f"at least one source needs a weight above 0, got {mix}")
        return mix


class ManiSkillVideos(Section):
    """Planner episodes of ManiSkill tasks, rendered by ``collect.camera`` (moved where
    ``collect.camera_by_task`` places a trained task); their actions are discarded."""

    kind: Literal["maniskill"] = "maniskill"
    tasks: list[str]
    clips_per_task: PositiveInt = 20
    # Seeds tried from here. A task the run also trains on must not reuse its demos'
    # seeds or the evaluation's (checked below): its videos would show the test scenes.
    seed_start: int = Field(default=500_000, ge=0)
    max_attempts_per_clip: float = Field(default=3.0, ge=1)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, value: list[str]) -> list[str]:
        return _distinct(value, "tasks", "task")

    def seeds(self) -> range:
        return range(self.seed_start, self.seed_start + int(self.clips_per_task * self.max_attempts_per_clip + 0.999))


class FolderVideos(Section):
    """The user's own video files (mp4, webm, gif), in the folder given to ``videos``
    (``dvc.yaml``: data/user_videos), resized and centre-cropped to the frame shape."""

    kind: Literal["folder"]
    # A file that cannot be decoded (or is too short): "refuse" stops the stage naming
    # it; "skip" names it in the log and the manifest and goes on.
    on_error: Literal["skip", "refuse"] = "refuse"
    fps: float = Field(default=20.0, gt=0)  # frames kept a second (ManiSkill's tasks step at 20 Hz)
    max_clips: PositiveInt | None = None  # the first N files, by name


VideoSource = Annotated[ManiSkillVideos | FolderVideos, Field(discriminator="kind")]


class VideosParams(Section):
    """The action-free video corpus (components.videos): named sources, none by default."""

    sources: dict[str, VideoSource] = {}
    workers: PositiveInt = 1  # planner processes
    min_frames: PositiveInt = 10  # a clip with fewer is refused (or skipped)
    max_frames: PositiveInt = 400  # a longer clip is cut here
    # Validation: a clip is blank when its pixels' standard deviation is below
    # min_frame_std, frozen when fewer than min_moving_fraction of its consecutive frame
    # pairs change (0.2% of the pixels by more than 10 grey levels: components.validate).
    min_frame_std: float = Field(default=1.0, ge=0)
    min_moving_fraction: float = Field(default=0.2, ge=0, le=1)

    @field_validator("sources")
    @classmethod
    def _names(cls, sources: dict[str, Any]) -> dict[str, Any]:
        for name in sources:
            if name == DEMOS or not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"source name {name!r}: letters, digits, - and _ only, and not {DEMOS!r}")
        return sources


class EvaluateParams(Section):
    # "paper": `episodes` episodes a task from seed_start; "rdt": 250 episodes (10 seed
    # groups 20241201+i of 25), as the baselines quoted by the paper.
    protocol: Literal["paper", "rdt"] = "paper"
    episodes: PositiveInt = 125
    # Far from the demos' seeds (0, 1, ...), so evaluation scenes are unseen.
    seed_start: int = Field(default=1_000_000, ge=0)
    # About twice a demo (the registered 50 steps is too short for the planner's demos):
    # motion-planning demos at 64x64 run PushCube 61-81 steps (median 69, 300 demos),
    # PickCube 50-86 and StackCube 94-109 (4 demos each).
    max_episode_steps: dict[str, PositiveInt] = {"PushCube-v1": 150, "PickCube-v1": 150, "StackCube-v1": 200}
    default_max_episode_steps: PositiveInt = 200
    videos: int = Field(default=3, ge=0)  # episodes a task recorded as mp4
    action_sampling_steps: PositiveInt | None = None  # DDIM steps; None = the model's default
    # Chunks drawn per decision (one batched call); the medoid is executed (par.sampling).
    action_samples: PositiveInt = 1
    shards: PositiveInt = 1  # seed shards a task (parallel evaluation workers)
    # Environments one evaluate process steps together (worker processes), one batched
    # policy call a decision; 0 = one a core, at most 8 (components.evaluate.envs_for).
    # Outcomes do not depend on it: each episode keeps its seeds.
    num_envs: int = Field(default=0, ge=0)
    # The simulation evaluation steps: cpu (worker processes, as the demos were made) or
    # gpu (one ManiSkill GPU simulation of num_envs envs, 0 = 128; its success rates are
    # comparable with GPU evaluations only; components.integrations.chunk_env).
    sim: Literal["cpu", "gpu"] = "cpu"
    # torch threads of one evaluate process; 0 = torch's default (every core). When the
    # DAG runs tasks and shards side by side, give each cores / parallel workers: two
    # processes both using every core of this 2-core machine ran 5-10x slower, not 2x.
    threads: int = Field(default=0, ge=0)


class ScoreParams(Section):
    horizon: PositiveInt = 8  # chunks predicted open loop from the first frame
    videos: int = Field(default=2, ge=0)  # side-by-side videos a task


Rate = Annotated[float, Field(ge=0, le=1)]


class GateParams(Section):
    model_name: str = Field(default="par-policy", min_length=1)
    # A task passes when the lower end of its success_once Wilson 95% interval clears
    # this; keys must be tasks of the run (a misspelt one is an error, not the default).
    min_wilson_low: dict[str, Rate] = {}
    default_min_wilson_low: Rate = 0.5
    # The candidate may fall at most this far below the champion's success_once on any task.
    max_regression: Rate = 0.05
    # Evaluations over fewer episodes are no evidence (the paper's protocol: 125 a task).
    min_episodes: PositiveInt = 125
    # Exit non-zero when the gate refuses to promote (otherwise the refusal is reported only).
    fail_on_refusal: bool = False


class Params(Section):
    """The whole params.yaml. Sections of later stages are added as they land."""

    tasks: list[str] = ["PushCube-v1"]
    collect: CollectParams = CollectParams()
    validate_: ValidateParams = Field(default=ValidateParams(), alias="validate")
    encode: EncodeParams = EncodeParams()
    model: ModelParams = ModelParams()
    videos: VideosParams = VideosParams()
    pretrain: PretrainParams = PretrainParams()
    train: OptimParams = OptimParams()
    evaluate: EvaluateParams = EvaluateParams()
    score: ScoreParams = ScoreParams()
    gate: GateParams = GateParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, value: list[str]) -> list[str]:
        return _distinct(value, "tasks", "task")

    @model_validator(mode="after")
    def _by_task_of_listed_tasks(self) -> Params:
        for section, key in BY_TASK:
            unknown = sorted(set(getattr(getattr(self, section), key)) - set(self.tasks))
            if unknown:
                raise ValueError(f"{section}.{key} names {unknown}, which tasks {self.tasks} does not list")
        unknown = sorted(set(self.pretrain.mix) - {DEMOS, *self.videos.sources})
        if unknown:
            raise ValueError(f"pretrain.mix names {unknown}: neither {DEMOS!r} nor a source of videos.sources")
        for name, source in self.videos.sources.items():
            if isinstance(source, ManiSkillVideos):
                _no_shared_seeds(name, source, self)
        _something_to_hold(self)
        return self

    @property
    def validate_params(self) -> ValidateParams:
        return self.validate_


def _something_to_hold(params: Params) -> None:
    """freeze_pretrained_steps holds weights taken from video pretraining: train only,
    and only when there are such weights."""
    if params.pretrain.freeze_pretrained_steps:
        raise ValueError("pretrain.freeze_pretrained_steps: pretraining has no pretrained weights; set it under train")
    reasons = {
        "pretrain.enabled is false": not params.pretrain.enabled,
        "the baseline has no video pretraining": params.model.kind == "bc",
        "model.ablation is no_video_pretrain": params.model.ablation == "no_video_pretrain",
    }
    why = [reason for reason, applies in reasons.items() if applies]
    if params.train.freeze_pretrained_steps and why:
        raise ValueError(f"train.freeze_pretrained_steps holds video-pretrained weights, but {why[0]}")


def _no_shared_seeds(name: str, source: ManiSkillVideos, params: Params) -> None:
    """Videos of a trained task must show neither its demos' scenes nor the test scenes."""
    videos = source.seeds()
    evaluation = range(params.evaluate.seed_start, params.evaluate.seed_start + params.evaluate.episodes)
    for task in set(source.tasks) & set(params.tasks):
        collect = params.collect
        demos = range(
            collect.seed_start,
            collect.seed_start + int(collect.demos_for(task) * collect.max_attempts_per_demo + 0.999),
        )
        for what, seeds in (("the demos' seeds", demos), ("the evaluation's seeds", evaluation)):
            if videos.start < seeds.stop and seeds.start < videos.stop:
                raise ValueError(
                    f"videos.sources.{name}: {task} seeds {videos.start}..{videos.stop - 1} overlap {what} "
                    f"{seeds.start}..{seeds.stop - 1}; move its seed_start"
                )


def drop_tasks(data: dict[str, Any], tasks: set[str]) -> None:
    """Remove ``tasks``' entries from the per-task mappings of raw params ``data``
    (when a run leaves tasks out; a name no run lists stays, to be refused by name)."""
    for section, key in BY_TASK:
        entries = (data.get(section) or {}).get(key)
        if entries:
            data[section][key] = {t: v for t, v in entries.items() if t not in tasks}


class ParamsError(ComponentError, ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key."""


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors())


def materialize(data: dict[str, Any], source: str = "params") -> dict[str, Any]:
    """Validate a (partial) params mapping and return it complete, every default written
    out: DVC needs each parameter a stage declares to be present in params.yaml."""
    try:
        return Params.model_validate(data).model_dump(mode="json", by_alias=True)
    except ValidationError as exc:
        raise ParamsError(f"{source} is invalid: {_problems(exc)}") from exc


def load_params(path: str | Path, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate a params file; ``overrides`` are dotted keys (``collect.workers``)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"params file {path} must hold a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(f"params file {path} is invalid: {_problems(exc)}") from exc
