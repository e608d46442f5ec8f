"""Helpers every component shares: atomic outputs, CLI error handling, logging, and
the environment ManiSkill needs on a CPU-only machine."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("components")

ROOT = Path(__file__).resolve().parents[1]


class ComponentError(Exception):
    """A problem with a component's input; the message names the input and the problem."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run a component's main; known input errors become one line and exit code 2."""
    from components.params import ParamsError

    setup_logging()
    try:
        main(argv)
    except (ComponentError, ParamsError, FileNotFoundError) as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def use_software_vulkan() -> None:
    """Point Vulkan at the project's lavapipe driver unless the caller chose one."""
    icd = ROOT / ".vulkan" / "lvp_icd.json"
    if "VK_ICD_FILENAMES" not in os.environ and icd.is_file():
        os.environ["VK_ICD_FILENAMES"] = str(icd)
    os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
    # SAPIEN falls back to its bundled Vulkan loader, and ManiSkill to CPU rendering,
    # as intended on this machine: keep those two notices out of the logs.
    warnings.filterwarnings("ignore", message="Failed to find system libvulkan")
    logging.getLogger("mani_skill").setLevel(logging.ERROR)


@contextlib.contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block succeeds.

    A killed or failing step leaves ``target`` as it was (absent, or the previous
    complete output) plus, at worst, a hidden ``.name.tmp-*`` folder that the next run
    ignores and removes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    tmp.chmod(0o755)
    try:
        yield tmp
        if target.exists():
            old = target.parent / f".{target.name}.tmp-old-{os.getpid()}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ComponentError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ComponentError(f"{what} {path} is not valid JSON: {exc}") from exc
