"""Shared test set-up: a deterministic torch, and markers derived from the fixtures a
test uses, so that a test that starts a server or the simulator is marked by
construction, not by hand:

* ``simulator``: the test uses the ``simulator`` fixture (ManiSkill with the project's
  software Vulkan driver), directly or through another fixture (``demos``, ...);
* ``server``: it uses ``servers`` (MLflow, moto's S3, Postgres, a live Airflow, podman's
  API socket on loopback);
* ``container``: it uses ``image`` (the component image, built with podman);
* each of these is ``slow`` too.

``make test-fast`` deselects all three. Each mark is also enforced: a test without
``server`` cannot start a server, and one without ``simulator`` cannot make a
ManiSkill environment, in this process or in a subprocess.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MARK_OF_FIXTURE = {"simulator": "simulator", "servers": "server", "image": "container"}
# Where an unmarked test's subprocesses look for a Vulkan driver: nowhere.
NO_VULKAN = "/nonexistent/this-test-lacks-the-simulator-fixture.json"
_UNDO = pytest.StashKey[pytest.MonkeyPatch]()


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def simulator() -> None:
    """ManiSkill on this machine: the project's software Vulkan driver (``make setup``)."""
    from components.integrations.maniskill import use_software_vulkan

    use_software_vulkan()


@pytest.fixture(scope="session")
def servers() -> Iterator[object]:
    """Leave to start real servers on loopback (tests.harness.servers and .airflow)."""
    from tests.harness import servers as harness

    yield harness


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for fixture, mark in MARK_OF_FIXTURE.items():
            if fixture in used:
                item.add_marker(mark)
                item.add_marker("slow")


def _refuse_simulator(*args: object, **kwargs: object) -> None:
    raise RuntimeError("this test uses ManiSkill without the `simulator` fixture: request it, so it is marked")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the test's fixtures: what its marks allow it to start."""
    from components.integrations import maniskill
    from tests.harness import servers

    servers.ALLOWED = item.get_closest_marker("server") is not None
    if item.get_closest_marker("simulator") is None:
        mp = pytest.MonkeyPatch()
        mp.setattr(maniskill, "make_env", _refuse_simulator)
        mp.setenv("VK_ICD_FILENAMES", NO_VULKAN)
        item.stash[_UNDO] = mp


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    """After the test's own fixtures are torn down (a test's ``monkeypatch`` may have
    set the same variable since, and restores the value it found: ours)."""
    yield
    undo = item.stash.get(_UNDO, None)
    if undo is not None:
        undo.undo()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the component image's build now when image tests will run (they wait for
    it); PAR_EARLY_IMAGE_BUILD=0 keeps it in the image fixture instead."""
    wanted = any(item.get_closest_marker("container") for item in session.items)
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
    from tests.harness.servers import stop
    from tests.infra import conftest as infra_conftest

    build = infra_conftest.EARLY_BUILD
    if build is not None and build.proc.poll() is None:
        stop(build.proc)
