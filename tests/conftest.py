"""Shared test set-up: a deterministic torch, and the software Vulkan driver for ManiSkill."""

from __future__ import annotations

import os
import shutil
import tempfile
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


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the component image's build now when the image tests will run (they wait
    for it); PAR_EARLY_IMAGE_BUILD=0 keeps it in the image fixture instead."""
    infra = ROOT / "tests" / "infra"
    wanted = any(Path(str(item.path)).is_relative_to(infra) for item in session.items)
    if (
        not wanted
        or session.config.option.collectonly
        or shutil.which("podman") is None
        or os.environ.get("PAR_EARLY_IMAGE_BUILD") == "0"
    ):
        return
    from tests.infra import conftest as infra_conftest

    log = Path(tempfile.mkdtemp(prefix="par-image-build-")) / "build.log"
    infra_conftest.EARLY_BUILD = infra_conftest.start_build(log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A build still running (the image tests deselected or failed early) is stopped."""
    from tests.infra import conftest as infra_conftest
    from tests.servers import stop

    build = infra_conftest.EARLY_BUILD
    if build is not None and build.proc.poll() is None:
        stop(build.proc)
