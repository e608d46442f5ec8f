"""The component image, built for real with podman (no Docker engine), and podman's
Docker-compatible API socket; shared by the image and docker-runner tests.

The image is built once a session by docker/build.sh, which reuses what it can (the base
image, the wheels while requirements.lock is unchanged, podman's layer cache): a few
seconds when nothing changed, several minutes from scratch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.servers import stop

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/par-components:cpu"
CONTAINERS_CONF = ROOT / "docker" / "containers.conf"
BUILD_TIMEOUT = 2400  # seconds: a build from scratch on 2 busy cores
TASK = "PushCube-v1"


def podman_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``podman ARGS`` with the project's containers.conf; on failure, say what it printed."""
    result = subprocess.run(["podman", *args], capture_output=True, text=True, env=podman_env(), timeout=timeout)
    if check:
        assert result.returncode == 0, f"podman {' '.join(args)} -> {result.returncode}\n{result.stderr[-4000:]}"
    return result


@dataclass(frozen=True)
class Build:
    """A running docker/build.sh: its process, its log, when it started."""

    proc: subprocess.Popen
    log: Path
    start: float


def start_build(log: Path) -> Build:
    """docker/build.sh in the background, in its own process group, at a lower priority:
    started when the session begins (tests/conftest.py), it fills the cores the other
    tests leave idle (their servers starting, Airflow polling) and is usually done by the
    time the image tests run."""
    out = log.open("w")
    try:
        proc = subprocess.Popen(
            ["nice", "-n", "10", str(ROOT / "docker" / "build.sh")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**podman_env(), "PAR_IMAGE": IMAGE},
            start_new_session=True,
        )
    finally:
        out.close()
    return Build(proc, log, time.monotonic())


# Set by tests/conftest.py when the session collected tests of this folder.
EARLY_BUILD: Build | None = None


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The component image, built (or brought up to date) by docker/build.sh."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (infra/local/test-tools.sh installs it)")
    build = EARLY_BUILD or start_build(tmp_path_factory.mktemp("build") / "build.log")
    proc, log, start = build.proc, build.log, build.start
    try:
        returncode = proc.wait(timeout=max(1.0, BUILD_TIMEOUT - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        stop(proc)
        pytest.fail(f"docker/build.sh ran over {BUILD_TIMEOUT} s:\n{log.read_text()[-6000:]}")
    text = log.read_text()
    assert returncode == 0, f"docker/build.sh failed:\n{text[-6000:]}"
    timings = [line for line in text.splitlines() if line.startswith("[build]")]
    print(f"image ready {time.monotonic() - start:.0f} s after its build started:", *timings, sep="\n")
    return IMAGE


@pytest.fixture(scope="session")
def smoke_params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete params file from the smoke profile (written on the host)."""
    out = tmp_path_factory.mktemp("params") / "params.yaml"
    subprocess.run(
        [sys.executable, "-m", "components.params", str(ROOT / "profiles" / "smoke.yaml"), "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="session")
def container_dataset(
    image: str, smoke_params: Path, tmp_path_factory: pytest.TempPathFactory, simulator: None
) -> Path:
    """One PushCube-v1 demo collected inside the container (no network, the image's own
    Vulkan driver, its non-root user) into a bind-mounted host folder."""
    work = tmp_path_factory.mktemp("container-collect")
    work.chmod(0o777)  # the image's user (uid 1000) writes here
    params = work / "params.yaml"
    shutil.copy(smoke_params, params)
    out = work / "demos" / TASK
    result = podman(
        "run", "--rm", "--network", "none", "-v", f"{work}:{work}", image,
        "components.collect", "--params", str(params), "--task", TASK, "--demos", "1", "--out", str(out),
        "--no-progress",
        timeout=900,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"collect in the container failed:\n{result.stderr[-4000:]}"
    return out


@pytest.fixture(scope="session")
def podman_socket(tmp_path_factory: pytest.TempPathFactory, servers: object) -> Iterator[str]:
    """``podman system service`` on a private socket (the Docker engine API), in its own
    process group, stopped at the end; yields the socket's URL."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (infra/local/test-tools.sh installs it)")
    import docker

    folder = tmp_path_factory.mktemp("podman-api")
    url = f"unix://{folder / 'podman.sock'}"
    log = folder / "service.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["podman", "system", "service", "--time=0", url],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=podman_env(),
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"podman system service exited: {log.read_text()[-3000:]}"
            try:
                docker.DockerClient(base_url=url, timeout=5).ping()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no Docker API on {url} after 60 s: {log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield url
    finally:
        stop(proc)
