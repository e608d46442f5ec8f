"""Saving and loading models (safetensors + the config), and loading video-pretrained
weights into a physical model.

A model directory holds ``model.safetensors`` (weights, with the config JSON in the
file's metadata) and ``config.json`` (the same config, for people). Writes are
atomic: the directory appears complete or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import safe_open
from safetensors.torch import load_file, save

from par.baseline import BCConfig, BCPolicy
from par.config import ModelConfig
from par.model import PAR, VIDEO_PREFIXES

Model = PAR | BCPolicy

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def atomic_dir(target: Path) -> tempfile.TemporaryDirectory:
    """A temporary sibling directory of ``target`` (same filesystem, for rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.tmp-")


def replace_dir(tmp: Path, target: Path) -> None:
    """Move ``tmp`` into place as ``target``, replacing an older ``target``."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def save_model(model: Model, directory: str | Path, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the model's weights and config to ``directory`` atomically."""
    target = Path(directory)
    config_json = model.config.model_dump_json()
    kind = "bc" if isinstance(model, BCPolicy) else "par"
    metadata = {"config": config_json, "format": "par-v1", "kind": kind, **(extra_metadata or {})}
    with atomic_dir(target) as tmp:
        tmp_path = Path(tmp) / "model"
        tmp_path.mkdir()
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        (tmp_path / WEIGHTS).write_bytes(stable_safetensors(save(state, metadata=metadata)))
        (tmp_path / CONFIG).write_text(json.dumps(json.loads(config_json), indent=2) + "\n")
        replace_dir(tmp_path, target)
    return target


def stable_safetensors(blob: bytes) -> bytes:
    """The same safetensors file with its JSON header in sorted key order. safetensors
    writes the metadata in a hash map's order, which changes from one process to the
    next, so the same weights gave different bytes (and DVC a different hash) every run.
    Tensor data offsets are relative to the header's end, so they stay valid."""
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"))
    text += " " * (-len(text) % 8)  # the format aligns the data on 8 bytes
    return len(text).to_bytes(8, "little") + text.encode() + blob[8 + length :]


def read_config(directory: str | Path) -> ModelConfig | BCConfig:
    """The config stored in a model directory (from the weights file's metadata)."""
    weights = Path(directory) / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"no model weights at {weights}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{weights} is not a readable safetensors file: {exc}") from exc
    if "config" not in metadata:
        raise ValueError(f"{weights} carries no PAR config in its metadata")
    config_class = BCConfig if metadata.get("kind") == "bc" else ModelConfig
    try:
        return config_class.model_validate_json(metadata["config"])
    except ValidationError as exc:
        raise ValueError(f"{weights} holds an invalid config: {exc}") from exc


def load_model(directory: str | Path) -> Model:
    """Rebuild a model (PAR or the baseline) from a directory written by :func:`save_model`."""
    config = read_config(directory)
    model = BCPolicy(config) if isinstance(config, BCConfig) else PAR(config)
    state = load_file(str(Path(directory) / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights in {directory} do not match their config: missing {missing}, unexpected {unexpected}"
        )
    return model


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did with every parameter of the target model."""

    taken: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "name: source shape vs target shape"

    def taken_names(self) -> set[str]:
        """The state-dict names of the tensors taken (whole, or their leading rows)."""
        return {name.split("[", 1)[0] for name in self.taken}

    def summary(self) -> str:
        return (
            f"{len(self.taken)} tensors taken from the pretrained model, "
            f"{len(self.new)} new, {len(self.mismatched)} shape mismatches"
        )


TASK_EMBED = "task_embed"  # (num_tasks, task_tokens, d): one row a task


def load_pretrained(model: PAR, source: str | Path | dict[str, torch.Tensor]) -> LoadReport:
    """Copy video-pretrained weights into ``model`` (a physical model).

    Only tensors that video pretraining trains (``VIDEO_PREFIXES``) are taken; a
    tensor whose shape differs keeps its fresh initialisation and is listed as
    mismatched; every other tensor is new. The one exception is the task embedding of
    a model pretrained on more tasks than ``model`` has (clips of other tasks, given
    ids after the policy's own): its leading rows, the policy's tasks, are taken.
    """
    state = load_file(str(Path(source) / WEIGHTS)) if not isinstance(source, dict) else source
    report = LoadReport()
    own = model.state_dict()
    update = {}
    for name, tensor in own.items():
        src = state.get(name)
        if src is None or not name.startswith(VIDEO_PREFIXES):
            report.new.append(name)
        elif name == TASK_EMBED and src.shape[0] > tensor.shape[0] and src.shape[1:] == tensor.shape[1:]:
            update[name] = src[: tensor.shape[0]]
            report.taken.append(f"{name}[:{tensor.shape[0]}]")
        elif tuple(src.shape) != tuple(tensor.shape):
            report.mismatched.append(f"{name}: {tuple(src.shape)} vs {tuple(tensor.shape)}")
        else:
            update[name] = src
            report.taken.append(name)
    model.load_state_dict(update, strict=False)
    return report
