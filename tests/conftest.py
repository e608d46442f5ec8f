"""Shared test set-up: a deterministic torch, and the software Vulkan driver for ManiSkill."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

_icd = ROOT / ".vulkan" / "lvp_icd.json"
if _icd.is_file():
    os.environ.setdefault("VK_ICD_FILENAMES", str(_icd))
os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
