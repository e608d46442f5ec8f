"""A throwaway copy of the project as its own git + DVC repository, for `dvc repro`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.harness.processes import run_group

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def project_copy(workdir: Path, params: dict[str, Any] | None = None) -> Path:
    """``workdir/repo``: a git + DVC repository with the project's code, its pipeline
    (dvc.yaml, DVC config) and params.yaml: the repository's, or ``params`` completed."""
    from components.formats.params import materialize

    repo = workdir / "repo"
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    (repo / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    for package in ("components", "par"):
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    text = yaml.safe_dump(materialize(params), sort_keys=False) if params else (REPO / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text)
    (repo / "data" / "user_videos").mkdir(parents=True)  # the videos stage's dep (infra/local/setup.sh)
    git = ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True)
    return repo


def dvc_repro(repo: Path, env: dict[str, str], log: Path, timeout: float = 1800) -> float:
    """``dvc repro`` in ``repo`` (its own process group, output to ``log``); its wall time."""
    code, seconds = run_group([str(BIN / "dvc"), "repro"], env, log, timeout, cwd=repo)
    if code != 0:
        raise RuntimeError(f"dvc repro failed ({code}): {log.read_text(errors='replace')[-3000:]}")
    return seconds
