"""Real servers on loopback for the tests, each in its own process group.

Every server is stopped by its process group (TERM, then KILL), also when the test
that started it fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout} s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, grace: float = 10) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def server(cmd: list[str], health: str, log: Path, env: dict | None = None, timeout: float = 60) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )
    try:
        wait_http(health, timeout, proc, log)
        yield
    finally:
        stop(proc)


@contextlib.contextmanager
def mlflow_server(
    root: Path, artifacts: list[str] | None = None, env: dict[str, str] | None = None, timeout: float = 90
) -> Iterator[str]:
    """``mlflow server`` with a SQLite backend; yields its URI. Artifacts go to
    ``root/artifacts`` unless ``artifacts`` gives the server's artifact options."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        *(artifacts or ["--artifacts-destination", str(root / "artifacts")]),
        "--workers",
        "1",
    ]
    uri = f"http://127.0.0.1:{port}"
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
    with server(cmd, f"{uri}/health", root / "server.log", env=env, timeout=timeout):
        yield uri


@contextlib.contextmanager
def moto_server(root: Path) -> Iterator[str]:
    """An S3-compatible endpoint (moto) on loopback; yields its URL."""
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    cmd = [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with server(cmd, f"{url}/moto-api/", root / "moto.log"):
        yield url
