"""Airflow of its own for the tests and the orchestration benchmark: an environment in
a private AIRFLOW_HOME (SQLite, or the Postgres the caller names), ``airflow dags test``
as a subprocess, and a live stack (api-server, scheduler, dag-processor on 127.0.0.1;
LocalExecutor, or CeleryExecutor with a Redis broker and Celery workers) driven through
its REST API, every process stopped by its process group."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.processes import descendants, free_port, run_group, spawn, stop_tree, tagged

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")
SITE = Path(__file__).resolve().parent / "airflow_site"  # airflow_local_settings of the Celery stack


def airflow_env(
    home: Path, runs_root: Path, extra: dict[str, str] | None = None, parallelism: int = 2
) -> dict[str, str]:
    """An environment for an Airflow of its own: AIRFLOW_HOME, SQLite metadata DB and
    DAGs folder of this checkout; nothing from the caller's AIRFLOW_* settings (so
    ~/airflow is never touched)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    home.mkdir(parents=True, exist_ok=True)
    icd = REPO / ".vulkan" / "lvp_icd.json"
    env |= {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "PAR_RUNNER": "local",
        "PAR_RUNS_ROOT": str(runs_root),
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONUNBUFFERED": "1",
        "MS_SKIP_ASSET_DOWNLOAD_PROMPT": "1",
    }
    if icd.is_file():
        env.setdefault("VK_ICD_FILENAMES", str(icd))
    return env | (extra or {})


def db_migrate(env: dict[str, str], log: Path) -> None:
    code, _ = run_group([AIRFLOW, "db", "migrate"], env, log, timeout=300)
    if code != 0:
        raise RuntimeError(f"airflow db migrate failed ({code}): {log.read_text()[-3000:]}")


def dags_test(dag_id: str, conf: dict[str, Any], env: dict[str, str], log: Path, timeout: float = 1800) -> float:
    """``airflow dags test`` of one DAG run; returns its wall time. The run's final state
    is read from the output (``DagRun Finished: ... state=``), not only the exit code."""
    code, seconds = run_group([AIRFLOW, "dags", "test", dag_id, "-c", json.dumps(conf)], env, log, timeout)
    state = dags_test_state(log)
    if code != 0 or state != "success":
        raise DagRunFailedError(f"airflow dags test {dag_id} ended with exit code {code}, run state {state}", log)
    return seconds


def dags_test_state(log: Path) -> str | None:
    found = None
    for line in log.read_text(errors="replace").splitlines():
        if "DagRun Finished:" in line and "state=" in line:
            found = line.split("state=", 1)[1].split(",", 1)[0].strip()
    return found


class DagRunFailedError(RuntimeError):
    def __init__(self, message: str, log: Path | None = None) -> None:
        tail = log.read_text(errors="replace")[-6000:] if log and log.is_file() else ""
        super().__init__(f"{message}\n{tail}")
        self.log = log


@dataclass(frozen=True)
class Celery:
    """The CeleryExecutor of a stack: the broker (Redis), the result backend (the metadata
    database, ``db+postgresql+psycopg2://...``), and the workers, one Celery worker process
    a name, each serving the shared ``default`` queue and a queue of its own name."""

    broker_url: str
    result_backend: str
    workers: tuple[str, ...] = ("par-worker-a", "par-worker-b")
    heartbeat_timeout: int = 30  # seconds without a task's heartbeat before the scheduler fails it
    concurrency: int = 1  # tasks a worker runs at once
    retry_delay_s: float | None = None  # every task's retry delay (the DAG's own when None)

    def env(self) -> dict[str, str]:
        return {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": self.result_backend,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(self.concurrency),
            # With task_acks_late (Airflow's default) a message stays unacknowledged while its
            # task runs, and Redis hands it out again after this long: longer than any task.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(self.heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_local_settings.worker_hostname",
            "PAR_WORKER_QUEUES": ",".join(self.workers),
        } | ({"PAR_RETRY_DELAY_S": str(self.retry_delay_s)} if self.retry_delay_s is not None else {})


class AirflowStack:
    """api-server, scheduler and dag-processor on 127.0.0.1 (free port), LocalExecutor
    on SQLite (or the database ``extra_env``'s SQL_ALCHEMY_CONN names), simple auth
    manager with one admin user; with ``celery``, the CeleryExecutor and its workers
    instead (give it Postgres: workers, scheduler and API server all write at once).
    Each process in its own process group, stopped (with every task process below it)
    by :meth:`stop`."""

    def __init__(
        self,
        home: Path,
        runs_root: Path,
        extra_env: dict[str, str] | None = None,
        parallelism: int = 2,
        user: str = "admin",
        password: str = "par-admin-pw",
        celery: Celery | None = None,
    ) -> None:
        self.home, self.user, self.password, self.celery = home, user, password, celery
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        passwords = home / "passwords.json"
        home.mkdir(parents=True, exist_ok=True)
        passwords.write_text(json.dumps({user: password}))
        self.env = airflow_env(
            home,
            runs_root,
            {
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{user}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",  # the nightly DAG must not start
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            }
            | (celery.env() if celery else {})
            | (extra_env or {}),
            parallelism=parallelism,
        )
        if celery:
            self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SITE), self.env.get("PYTHONPATH")) if p)
        self.procs: dict[str, subprocess.Popen] = {}
        self.workers: dict[str, subprocess.Popen] = {}  # Celery workers by name, each with a tag of its own
        self.tag = secrets.token_hex(8)  # in every process of the stack, tasks included
        self._worker_log_start: dict[str, int] = {}
        self._token: str | None = None

    # -- life cycle
    def start(self, timeout: float = 180) -> AirflowStack:
        from tests.harness.servers import allowed

        allowed("a live Airflow")
        db_migrate(self.env, self.home / "migrate.log")
        commands = {
            "api-server": [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            "scheduler": [AIRFLOW, "scheduler", "--skip-serve-logs"],  # the log server would bind every interface
            "dag-processor": [AIRFLOW, "dag-processor"],
        }
        try:
            for name, cmd in commands.items():
                self.procs[name] = spawn(cmd, self.env, self.home / f"{name}.log", tag=self.tag)
            for name in self.celery.workers if self.celery else ():
                self.start_worker(name, wait=False)
            self._wait_healthy(timeout)
            for name in self.workers:
                self.wait_worker(name, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    # -- Celery workers
    def start_worker(self, name: str, wait: bool = True, timeout: float = 120) -> None:
        """``airflow celery worker`` called ``name``: tasks from the queues ``default`` and
        ``name``; task instances it runs report ``name`` as their hostname. No log server
        (it would bind every interface; the task logs are local files)."""
        concurrency = str(self.celery.concurrency if self.celery else 1)
        cmd = [
            AIRFLOW, "celery", "worker", "--celery-hostname", name, "--queues", f"default,{name}",
            "--concurrency", concurrency, "--skip-serve-logs", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        log = self.home / f"{name}.log"
        self._worker_log_start[name] = log.stat().st_size if log.is_file() else 0
        self.workers[name] = spawn(cmd, self.env | {"PAR_WORKER_HOSTNAME": name}, log)
        if wait:
            self.wait_worker(name, timeout)

    def wait_worker(self, name: str, timeout: float) -> None:
        """Until the worker says it is ready (it consumes from its queues from then on)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.workers[name].poll() is not None:
                raise RuntimeError(f"worker {name} exited: {self.log_tail(name)}")
            text = (self.home / f"{name}.log").read_text(errors="replace")[self._worker_log_start[name] :]
            if f"@{name} ready." in text:
                return
            time.sleep(0.5)
        raise TimeoutError(f"worker {name} not ready after {timeout} s: {self.log_tail(name)}")

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL the worker ``name`` and every process below it (the task it runs, that
        task's command), as a machine that dies would; returns the pids killed."""
        proc = self.workers.pop(name)
        pids = sorted({proc.pid, *descendants(proc.pid), *tagged(proc.par_tag)})  # type: ignore[attr-defined]
        stop_tree(proc, grace=0)
        return pids

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            try:
                health = self.request("GET", "/api/v2/monitor/health", auth=False)
                if health.get("scheduler", {}).get("status") == "healthy":
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"Airflow not healthy after {timeout} s: {self.log_tail('api-server')}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def pids(self) -> list[int]:
        return [p.pid for p in [*self.procs.values(), *self.workers.values()] if p.poll() is None]

    def stop(self) -> None:
        for proc in self.workers.values():
            stop_tree(proc)
        for name in ("scheduler", "dag-processor", "api-server"):
            if name in self.procs:
                stop_tree(self.procs[name])

    def __enter__(self) -> AirflowStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST
    def token(self) -> str:
        if self._token is None:
            body = {"username": self.user, "password": self.password}
            self._token = self.request("POST", "/auth/token", body, auth=False)["access_token"]
        return self._token

    def request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        headers = {"Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        return json.loads(text) if text else None

    def wait_dag(self, dag_id: str, timeout: float = 120) -> dict[str, Any]:
        """Wait until the dag-processor has parsed ``dag_id``; unpause it."""
        deadline = time.time() + timeout
        while True:
            try:
                self.request("GET", f"/api/v2/dags/{dag_id}")
                break
            except RuntimeError as exc:
                if "HTTP 404" not in str(exc) or time.time() > deadline:
                    raise
                time.sleep(1)
        return self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        quoted = urllib.request.quote(run_id, safe="")
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}")

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.run(dag_id, run_id)["state"]

    def wait_runs(self, dag_id: str, run_ids: list[str], timeout: float) -> dict[str, str]:
        """Wait until every run has finished; returns their states."""
        deadline = time.time() + timeout
        states: dict[str, str] = {}
        while time.time() < deadline:
            states = {r: self.run_state(dag_id, r) for r in run_ids}
            if all(s in ("success", "failed") for s in states.values()):
                return states
            for name, proc in {**self.procs, **self.workers}.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            time.sleep(2)
        raise TimeoutError(f"runs of {dag_id} not finished after {timeout} s: {states}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """Every task instance of a run, mapped ones one by one (the latest try of each)."""
        quoted = urllib.request.quote(run_id, safe="")
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=100")["task_instances"]

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """Every try of one task instance, the first first (state, hostname, start and end)."""
        quoted = urllib.request.quote(run_id, safe="")
        index = f"/{map_index}" if map_index >= 0 else ""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}{index}/tries"
        return sorted(self.request("GET", path)["task_instances"], key=lambda t: t["try_number"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        quoted = urllib.request.quote(run_id, safe="")
        entry = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/{key}")
        return entry["value"]
