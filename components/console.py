"""What a person sees while a component runs: the one command-line wrapper, logging,
a readable progress line, and libraries kept quiet.

Every ``python -m components.<name>`` ends with ``raise SystemExit(run_cli(main))``:
the exit codes of :mod:`components.errors` are decided here and nowhere else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any, TextIO

from components.errors import EXIT_BAD_INPUT, EXIT_REFUSED, ComponentError, RefusedError

log = logging.getLogger("components")

# Libraries that log more than a pipeline user needs: their warnings stay, their chatter goes.
_QUIET_LOGGERS = {
    "mani_skill ": logging.ERROR,  # sic: "no CUDA, rendering on CPU" is expected on this machine
    "diffusers": logging.ERROR,  # without accelerate it advises installing it on every model load
    "great_expectations": logging.ERROR,
    "mlflow": logging.WARNING,
    "alembic": logging.WARNING,  # MLflow's SQLite store prints its migrations at INFO
    "urllib3": logging.WARNING,
    "botocore": logging.WARNING,
}


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def quiet_libraries() -> None:
    """Keep library noise out of the console (call before the libraries are imported)."""
    # diffusers sets its logger's level from this variable when it is first imported
    # (and the level below holds if it already was); MLflow draws a progress bar for
    # every artifact download.
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # SAPIEN falls back to its bundled Vulkan loader, as intended on a machine without one.
    warnings.filterwarnings("ignore", message="Failed to find system libvulkan")


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run a component's ``main``; a refusal exits 1, bad input 2, each as one line naming it."""
    setup_logging()
    quiet_libraries()
    try:
        main(argv)
    except RefusedError as exc:
        log.error("%s: %s", exc.label, exc)
        print(f"{exc.label}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (ComponentError, FileNotFoundError) as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum`` (counts: 1, seeds: 0);
    anything else is a usage error naming the argument (exit 2)."""

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return whole_number


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Progress:
    """One progress line a person can read, e.g.
    ``collect PushCube-v1: 120/300 demos, 0.68 demos/s, 4m25s left (planner 98%)``.

    On a terminal the line is rewritten in place; anywhere else (a pipe, ``dvc repro``
    in CI, an Airflow task log) it is logged every ``every`` seconds and at the end, so
    the log keeps a readable record instead of carriage returns. ``enabled=False``
    prints nothing."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        *,
        done: int = 0,
        every: float = 30.0,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.done = what, total, unit, done
        self.every, self.enabled = every, enabled
        self.stream = stream or sys.stderr
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.note = ""
        self._start_done, self._started = done, time.monotonic()
        self._shown = float("-inf")

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        made = self.done - self._start_done
        text = f"{self.what}: {self.done}/{self.total} {self.unit}"
        if made > 0 and elapsed > 0:
            rate = made / elapsed
            text += f", {rate:.3g} {self.unit}/s"
            if self.done < self.total:
                text += f", {_duration((self.total - self.done) / rate)} left"
            else:
                text += f", {_duration(elapsed)}"
        return text + (f" ({self.note})" if self.note else "")

    def update(self, n: int = 1, note: str | None = None) -> None:
        self.done += n
        if note is not None:
            self.note = note
        now = time.monotonic()
        if self.enabled and now - self._shown >= (0.5 if self.live else self.every):
            self._show(final=False)
            self._shown = now

    def _show(self, final: bool) -> None:
        if self.live:
            end = "\n" if final else ""
            self.stream.write(f"\r\033[K{self.line()}{end}")
            self.stream.flush()
        else:
            log.info("%s", self.line())

    def close(self) -> None:
        if self.enabled:
            self._show(final=True)
            self.enabled = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
