"""Writing outputs so that a killed step never leaves half a result, and reading JSON
inputs with errors that name the file."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from components.errors import ComponentError


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


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (temp file + rename): a killed writer leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """The JSON in ``path``; a missing or malformed file is a ComponentError naming it as ``what``."""
    path = Path(path)
    if not path.is_file():
        raise ComponentError(f"{what} {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ComponentError(f"{what} {path} is not valid JSON: {exc}") from exc


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as one line: every field's dotted path and its problem."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'the file'}: {e['msg']}" for e in exc.errors())


def read_checked_json(path: Path, what: str, model: type[BaseModel]) -> dict[str, Any]:
    """The JSON object in ``path``, checked against ``model``; an error names ``what``,
    the file and every field that is wrong."""
    data = read_json(path, what)
    if not isinstance(data, dict):
        raise ComponentError(f"{what} {path} must hold a JSON object, not {type(data).__name__}")
    try:
        model.model_validate(data)
    except ValidationError as exc:
        raise ComponentError(f"{what} {path} is invalid: {validation_problems(exc)}") from exc
    return data


def check_frame_shape(shape: list[int]) -> None:
    """A manifest's ``frame_shape``: [height, width, 3], each at least 1."""
    if any(n < 1 for n in shape) or shape[2] != 3:
        raise ValueError(f"frame_shape {shape} is not [height, width, 3]")
