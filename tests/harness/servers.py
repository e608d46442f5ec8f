"""Real servers on loopback for the tests, each in its own process group.

Every server is stopped by its process group (TERM, then KILL), also when the test
that started it fails. A test starts one only through the ``servers`` fixture
(tests/conftest.py), which marks it ``server``: anywhere else :func:`allowed` says no,
so that no test starts a server unmarked.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.harness.processes import free_port

BIN = Path(sys.executable).parent
ALLOWED = False  # set per test by tests/conftest.py: True for tests marked `server`


def allowed(what: str) -> None:
    """Refuse to start ``what`` in a test that did not ask for the ``servers`` fixture."""
    if not ALLOWED:
        raise RuntimeError(f"this test starts {what} without the `servers` fixture: request it, so it is marked server")


def wait_until(ready, what: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    """Poll ``ready()`` (an OSError counts as not yet) until it is true; fail early, with the
    server's log, if the server exits, and after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} not ready after {timeout} s: {log.read_text()[-3000:]}")


def wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    def healthy() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status < 500

    wait_until(healthy, f"the server at {url}", timeout, proc, log)


def stop(proc: subprocess.Popen, grace: float = 10, sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def server(cmd: list[str], health: str, log: Path, env: dict | None = None, timeout: float = 60) -> Iterator[None]:
    allowed(Path(cmd[0]).name)
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
    root: Path,
    artifacts: list[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 90,
    extra: list[str] | None = None,
) -> Iterator[str]:
    """``mlflow server`` with a SQLite backend; yields its URI. Artifacts go to
    ``root/artifacts`` unless ``artifacts`` gives the server's artifact options; ``extra``
    adds options (``--app-name basic-auth``)."""
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
        *(extra or []),
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


def postgres_bindir() -> Path:
    """The folder of ``initdb`` and ``postgres``: on PATH, or Debian's
    /usr/lib/postgresql/<version>/bin (infra/local/test-tools.sh installs it)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise FileNotFoundError("initdb not found: run infra/local/test-tools.sh (installs postgresql)")
    return Path(candidates[-1]).parent


@contextlib.contextmanager
def postgres_server(database: str = "airflow", user: str = "par", timeout: float = 60) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (free port, trust auth, its own
    process group); yields a SQLAlchemy URL of ``database``. Postgres refuses to run as
    root: under root the cluster is owned by, and the server runs as, the ``postgres``
    system user, in a folder of its own under the temp dir (pytest's tmp_path is
    private to root). The folder is removed after the server stops (fast shutdown)."""
    allowed("postgres")
    bindir = postgres_bindir()
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise RuntimeError(
                "postgres refuses to run as root and there is no 'postgres' user to run it as: "
                "install postgresql from the distribution (infra/local/test-tools.sh)"
            ) from None
    as_owner = {"user": owner.pw_uid, "group": owner.pw_gid} if owner else {}
    root = Path(tempfile.mkdtemp(prefix="par-postgres-"))
    data, log, port = root / "data", root / "postgres.log", free_port()
    proc: subprocess.Popen | None = None
    try:
        if owner:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync"]
        done = subprocess.run(initdb, capture_output=True, text=True, cwd=root, **as_owner)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {(done.stdout + done.stderr)[-3000:]}")
        cmd = [str(bindir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port), "-k", str(root)]
        with log.open("w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=root, **as_owner
            )
        _create_database(port, user, database, timeout, proc, log)
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/{database}"
    finally:
        if proc is not None:
            stop(proc, sig=signal.SIGINT)  # SIGINT: fast shutdown (SIGTERM waits for clients)
        shutil.rmtree(root, ignore_errors=True)


def _create_database(port: int, user: str, database: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    import psycopg2

    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            conn = psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres")
            break
        except psycopg2.OperationalError as exc:
            if time.time() > deadline:
                raise TimeoutError(f"postgres not up after {timeout} s: {exc}; {log.read_text()[-3000:]}") from exc
            time.sleep(0.2)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{database}"')
    finally:
        conn.close()


@contextlib.contextmanager
def redis_server(root: Path, timeout: float = 30) -> Iterator[str]:
    """Debian's ``redis-server`` on 127.0.0.1 (free port, no persistence, its own process
    group), the Celery executor's broker; yields its URL (database 0)."""
    allowed("redis-server")
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).is_file():
        raise FileNotFoundError("redis-server not found: run infra/local/test-tools.sh (installs redis-server)")
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    # Persistence off (--save "", no append-only file): a broker of the test's lifetime.
    cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--protected-mode", "yes", "--save", "",
           "--appendonly", "no", "--dir", str(root), "--daemonize", "no", "--logfile", ""]  # fmt: skip
    log = root / "redis.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_redis(port, timeout, proc, log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)


def _wait_redis(port: int, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    """Until the server answers PING with PONG (RESP, no client library)."""

    def pong() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")

    wait_until(pong, f"redis-server on {port}", timeout, proc, log)
