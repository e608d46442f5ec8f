"""How actions and proprioception are normalised for the model, and back: the maps a
policy bundle stores (``policy.json``) and training derives from the datasets' manifests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Normalizer:
    """Affine map of a vector to a normalised range, and back."""

    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def min_max(cls, low: list[float], high: list[float], floor: float = 1e-3) -> Normalizer:
        """[low, high] -> [-1, 1]; a constant dimension maps to 0."""
        low_a, high_a = np.asarray(low, np.float32), np.asarray(high, np.float32)
        return cls(offset=(low_a + high_a) / 2, scale=np.maximum((high_a - low_a) / 2, floor))

    @classmethod
    def standard(cls, mean: list[float], std: list[float], floor: float = 1e-3) -> Normalizer:
        return cls(offset=np.asarray(mean, np.float32), scale=np.maximum(np.asarray(std, np.float32), floor))

    def encode(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.offset) / self.scale).astype(np.float32)

    def decode(self, y: np.ndarray) -> np.ndarray:
        return (y * self.scale + self.offset).astype(np.float32)

    def to_json(self) -> dict[str, list[float]]:
        return {"offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, list[float]]) -> Normalizer:
        return cls(np.asarray(data["offset"], np.float32), np.asarray(data["scale"], np.float32))


def normalizers_from_stats(stats: dict[str, Any], tasks: list[str]) -> tuple[Normalizer, Normalizer]:
    """Action min-max and proprio mean/std normalisers over the given tasks' manifests."""
    manifests = [stats["manifests"][t] for t in tasks]
    low = np.min([m["action_min"] for m in manifests], axis=0)
    high = np.max([m["action_max"] for m in manifests], axis=0)
    # Pool proprio statistics (weighted by steps) across tasks.
    weights = np.asarray([m["counts"]["steps"] for m in manifests], np.float64)
    means = np.asarray([m["proprio_mean"] for m in manifests])
    stds = np.asarray([m["proprio_std"] for m in manifests])
    mean = (weights[:, None] * means).sum(0) / weights.sum()
    var = (weights[:, None] * (stds**2 + (means - mean) ** 2)).sum(0) / weights.sum()
    return Normalizer.min_max(low.tolist(), high.tolist()), Normalizer.standard(mean.tolist(), np.sqrt(var).tolist())
