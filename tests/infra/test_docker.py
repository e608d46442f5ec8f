"""The component image: a clean Dockerfile, every component CLI answers inside it, it runs
as a non-root user, and a real pipeline stage (collect, with the simulator and its
software Vulkan driver) runs in it with no network, its output read on the host."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.infra.conftest import ROOT, TASK, podman

HADOLINT = Path(sys.executable).parent / "hadolint"
# The first test to ask for the image may build it from scratch (minutes on 2 busy cores).
pytestmark = pytest.mark.timeout(3000)


def cli_modules() -> list[str]:
    """components.* modules with a command line (an ``if __name__ == "__main__"`` block)."""
    pattern = re.compile(r"^if __name__ == .__main__.:", re.MULTILINE)
    return sorted(p.stem for p in (ROOT / "components").glob("*.py") if pattern.search(p.read_text()))


def test_dockerfile_is_hadolint_clean():
    result = subprocess.run([str(HADOLINT), str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_keeps_the_production_base_and_a_python_m_entrypoint():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim" in text and "FROM ${BASE}" in text
    assert 'ENTRYPOINT ["python", "-m"]' in text
    assert re.search(r"^USER 1000", text, re.MULTILINE)


def test_image_runs_as_non_root_with_python_m_entrypoint(image):
    config = json.loads(podman("image", "inspect", image).stdout)[0]["Config"]
    assert config["Entrypoint"] == ["python", "-m"]
    assert config["User"] == "1000:1000"
    assert podman("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip() == "1000"


# Every CLI's --help inside one container and one interpreter: ``runpy`` runs each module
# as ``python -m`` does; separate containers would spend 8 s each importing torch again.
HELP_ALL = """
import contextlib, io, runpy, sys, warnings
warnings.simplefilter("ignore")
for module in sys.argv[1:]:
    out, sys.argv = io.StringIO(), [module, "--help"]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception as exc:
        code = repr(exc)
    print("HELP", module, code, out.getvalue().startswith("usage:"))
"""


def test_every_component_help_runs_in_the_image(image):
    modules = [f"components.{m}" for m in cli_modules()]
    assert len(modules) >= 10, modules  # collect ... gate, promote, regression
    args = ("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", HELP_ALL, *modules)
    result = podman(*args, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    answers = dict(line.split(" ", 2)[1:] for line in result.stdout.splitlines() if line.startswith("HELP "))
    assert answers == {m: "0 True" for m in modules}, result.stdout[-3000:]


def test_collect_runs_in_the_container_and_writes_to_the_host(container_dataset):
    manifest = json.loads((container_dataset / "manifest.json").read_text())
    assert manifest["task"] == TASK
    assert manifest["counts"]["episodes"] == 1
    episodes = sorted((container_dataset / "episodes").glob("*.npz"))
    assert len(episodes) == 1
    with np.load(episodes[0]) as ep:
        frames, actions = ep["frames"], ep["actions"]
    assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3
    assert frames.shape[0] == actions.shape[0] + 1 == manifest["counts"]["steps"] + 1
    assert frames.std() > 1  # rendered by the image's lavapipe, not a blank buffer
    assert container_dataset.stat().st_uid == 1000  # written by the image's user
