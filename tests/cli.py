"""Run a component's command line in the test process.

``python -m components.X`` spends 7-9 s of the suite's 2 cores importing torch,
diffusers and ManiSkill before it reads an argument; the error-path tests call a CLI a
few dozen times. :func:`run_module` executes the module as ``__main__`` exactly as
``python -m`` does (``runpy``: same argument parsing, same ``raise SystemExit(...)``)
and returns what a subprocess would: the exit code, stdout, and stderr including the
log lines. A few tests still start a real process, to cover the interpreter's side.
"""

from __future__ import annotations

import contextlib
import io
import logging
import runpy
import sys
import warnings
from dataclasses import dataclass


@dataclass
class Completed:
    """The fields of ``subprocess.CompletedProcess`` that the tests read."""

    returncode: int
    stdout: str
    stderr: str


def run_module(module: str, *args: str) -> Completed:
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    argv = sys.argv
    sys.argv = [module, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # runpy notes that the module is already imported (by this or another test)
            warnings.simplefilter("ignore", RuntimeWarning)
            try:
                runpy.run_module(module, run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
        root.removeHandler(handler)
    return Completed(code, out.getvalue(), err.getvalue())
