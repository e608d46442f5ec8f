"""Airflow of its own for the tests and the orchestration benchmark: an environment in
a private AIRFLOW_HOME (SQLite, or the Postgres the caller names), ``airflow dags test``
as a subprocess, and a live stack (api-server, scheduler, dag-processor on 127.0.0.1)
driven through its REST API, every process stopped by its process group."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.harness.processes import free_port, run_group, spawn, stop_tree

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")


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


class AirflowStack:
    """api-server, scheduler and dag-processor on 127.0.0.1 (free port), LocalExecutor
    on SQLite (or the database ``extra_env``'s SQL_ALCHEMY_CONN names), simple auth
    manager with one admin user; each process in its own process group, stopped (with
    every task process below it) by :meth:`stop`."""

    def __init__(
        self,
        home: Path,
        runs_root: Path,
        extra_env: dict[str, str] | None = None,
        parallelism: int = 2,
        user: str = "admin",
        password: str = "par-admin-pw",
    ) -> None:
        self.home, self.user, self.password = home, user, password
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
            | (extra_env or {}),
            parallelism=parallelism,
        )
        self.procs: dict[str, subprocess.Popen] = {}
        self.tag = secrets.token_hex(8)  # in every process of the stack, tasks included
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
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

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
        return [p.pid for p in self.procs.values() if p.poll() is None]

    def stop(self) -> None:
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
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            time.sleep(2)
        raise TimeoutError(f"runs of {dag_id} not finished after {timeout} s: {states}")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        quoted = urllib.request.quote(run_id, safe="")
        entry = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances/{task_id}/xcomEntries/{key}")
        return entry["value"]
