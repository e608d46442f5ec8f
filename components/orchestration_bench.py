"""orchestration_bench: the same small profile through ``dvc repro`` and through Airflow.

    python -m components.orchestration_bench [--profile ci-airflow] [--airflow dags-test|live|both]

Runs the pipeline once with ``dvc repro`` on a copy of the repository, and once through
Airflow: ``airflow dags test par_training`` (the default) and/or a live stack
(api-server, scheduler, dag-processor on 127.0.0.1, triggered through the REST API).
Prints one JSON object: both wall times, their ratio (target <= 1.3) and the Airflow
processes' memory (PSS summed over them, from /proc/<pid>/smaps_rollup; the component
processes that the tasks start are left out: they are the same under DVC).

The helpers here (an Airflow environment in a private AIRFLOW_HOME, a live stack whose
processes are stopped by process group, ``airflow dags test`` as a subprocess) are also
what the DAG tests use.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
AIRFLOW = str(BIN / "airflow")


# ------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TAG = "PAR_PROCESS_TAG"  # set in the environment of every process tree started here


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (whatever its process group or session)."""
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def tagged(tag: str | None) -> list[int]:
    """Live processes whose environment carries ``PAR_PROCESS_TAG=<tag>``: every process
    of a tree started by :func:`spawn`, also those that were re-parented to init when
    their parent died (Airflow's task commands run in sessions of their own)."""
    if not tag:
        return []
    needle = f"{TAG}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _groups(pids: list[int] | set[int]) -> set[int]:
    out = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            out.add(os.getpgid(pid))
    return out - {os.getpgid(0)}  # never the caller's own group


def _signal_groups(pgids: set[int], sig: int) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def stop_tree(proc: subprocess.Popen, grace: float = 15) -> None:
    """Stop ``proc`` (started by :func:`spawn`, in a session of its own) by its process
    group, and the groups of all the processes of its tree: Airflow starts each task (and
    each BashOperator command) in a new process group, which a signal to the parent's
    group misses, and a command may outlive its parent. TERM first; KILL after ``grace``."""
    tag = getattr(proc, "par_tag", None)

    def members() -> set[int]:
        pids = set(descendants(proc.pid)) | set(tagged(tag))
        return pids | {proc.pid} if proc.poll() is None else pids

    deadline = time.time() + grace
    termed: set[int] = set()
    while (pids := members()) and time.time() < deadline:
        groups = _groups(pids) | ({proc.pid} if proc.poll() is None else set())
        _signal_groups(groups - termed, signal.SIGTERM)  # also groups that appear meanwhile
        termed |= groups
        time.sleep(0.2)
    for _ in range(100):
        pids = members()
        if not pids:
            break
        _signal_groups(_groups(pids) | ({proc.pid} if proc.poll() is None else set()), signal.SIGKILL)
        time.sleep(0.1)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def spawn(
    cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None, tag: str | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in a new session (its own process group), output appended to
    ``log``, its environment tagged so that :func:`stop_tree` finds its whole tree."""
    log.parent.mkdir(parents=True, exist_ok=True)
    tag = tag or secrets.token_hex(8)
    with log.open("a") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**env, TAG: tag}, cwd=cwd, start_new_session=True
        )
    proc.par_tag = tag  # type: ignore[attr-defined]
    return proc


def run_group(
    cmd: list[str], env: dict[str, str], log: Path, timeout: float, cwd: Path | None = None
) -> tuple[int, float]:
    """Run ``cmd`` in its own process group (output to ``log``); kill the whole tree on
    timeout or interruption. Returns the exit code and the wall time."""
    started = time.perf_counter()
    proc = spawn(cmd, env, log, cwd)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = -9
    finally:
        stop_tree(proc)  # whatever is left of the tree (nothing, after a clean exit)
    return code, time.perf_counter() - started


def pss_kib(pid: int) -> int:
    """Proportional set size of one process (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def is_component(pid: int) -> bool:
    """A component command (``python -m components.<name>``) or the shell that runs one."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    if any(a.startswith("components.") for a in argv):
        return True
    return bool(argv) and Path(argv[0]).name == "bash" and "components." in " ".join(argv)


def airflow_pss_kib(roots: list[int]) -> int:
    """PSS summed over the Airflow processes under ``roots``: the roots, their
    supervisors and task runners; not the component commands the tasks run (nor the
    shells that wrap them, nor anything below those)."""
    import psutil

    total = 0
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if is_component(pid):
            continue
        total += pss_kib(pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            stack += [c.pid for c in psutil.Process(pid).children()]
    return total


class MemorySampler:
    """Samples :func:`airflow_pss_kib` of some roots every ``every`` seconds in a thread."""

    def __init__(self, roots: list[int], every: float = 1.0) -> None:
        self.roots, self.every, self.samples = roots, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(airflow_pss_kib(self.roots))
            self._stop.wait(self.every)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        values = [s for s in self.samples if s] or [0]
        return {"peak_mib": round(max(values) / 1024, 1), "mean_mib": round(sum(values) / len(values) / 1024, 1)}


# ------------------------------------------------------------------ Airflow


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
        "AIRFLOW_VAR_PAR_RUNNER": "local",
        "AIRFLOW_VAR_PAR_RUNS_ROOT": str(runs_root),
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


# ------------------------------------------------------------------ DVC


def dvc_copy(workdir: Path, params: dict[str, Any]) -> Path:
    """A git + DVC repository with the project's pipeline files and a complete params.yaml."""
    import yaml

    from components.params import materialize

    repo = workdir / "repo"
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    (repo / ".dvc").mkdir()
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    for package in ("components", "par"):
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump(materialize(params), sort_keys=False))
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run([*git, *cmd], cwd=repo, check=True, capture_output=True)
    return repo


def dvc_repro(repo: Path, env: dict[str, str], log: Path, timeout: float = 1800) -> float:
    code, seconds = run_group([str(BIN / "dvc"), "repro"], env, log, timeout, cwd=repo)
    if code != 0:
        raise RuntimeError(f"dvc repro failed ({code}): {log.read_text(errors='replace')[-3000:]}")
    return seconds


# ------------------------------------------------------------------ the benchmark


def bench(profile: str, mode: str, workdir: Path) -> dict[str, Any]:
    import yaml

    params = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    base["PATH"] = f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    base["DVC_NO_ANALYTICS"] = "1"
    base["MS_SKIP_ASSET_DOWNLOAD_PROMPT"] = "1"
    if (REPO / ".vulkan" / "lvp_icd.json").is_file():  # the copy has no .vulkan of its own
        base.setdefault("VK_ICD_FILENAMES", str(REPO / ".vulkan" / "lvp_icd.json"))
    result: dict[str, Any] = {"profile": profile, "tasks": params.get("tasks"), "cpus": os.cpu_count()}

    repo = dvc_copy(workdir / "dvc", params)
    dvc_env = base | {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'dvc' / 'mlflow.db'}", "PAR_PIPELINE_KEY": "bench"}
    result["dvc_repro_s"] = round(dvc_repro(repo, dvc_env, workdir / "dvc" / "repro.log"), 1)

    conf = {"profile": profile}
    if mode in ("dags-test", "both"):
        home = workdir / "airflow-test"
        env = airflow_env(home, home / "runs", {"MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
        started = time.perf_counter()
        db_migrate(env, home / "migrate.log")
        result["airflow_db_migrate_s"] = round(time.perf_counter() - started, 1)
        log = home / "dags-test.log"
        started = time.perf_counter()
        proc = spawn([AIRFLOW, "dags", "test", "par_training", "-c", json.dumps(conf)], env, log)
        try:
            with MemorySampler([proc.pid]) as memory:
                code = proc.wait(1800)
        finally:
            stop_tree(proc)
        seconds = time.perf_counter() - started
        if code != 0 or dags_test_state(log) != "success":
            raise DagRunFailedError(f"airflow dags test failed ({code}, {dags_test_state(log)})", log)
        result["airflow_dags_test_s"] = round(seconds, 1)
        result["ratio_dags_test"] = round(seconds / result["dvc_repro_s"], 2)
        result["airflow_dags_test_pss"] = memory.summary()
    if mode in ("live", "both"):
        home = workdir / "airflow-live"
        stack = AirflowStack(home, home / "runs", {"MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
        started = time.perf_counter()
        with stack:
            result["airflow_live_start_s"] = round(time.perf_counter() - started, 1)
            stack.wait_dag("par_training")
            time.sleep(5)
            result["airflow_live_idle_pss_mib"] = round(airflow_pss_kib(stack.pids()) / 1024, 1)
            started = time.perf_counter()
            with MemorySampler(stack.pids()) as memory:
                run_id = stack.trigger("par_training", conf)
                state = stack.wait_runs("par_training", [run_id], 1800)[run_id]
            seconds = time.perf_counter() - started
        if state != "success":
            raise RuntimeError(f"live Airflow run {run_id} ended {state}; logs under {home / 'logs'}")
        result["airflow_live_run_s"] = round(seconds, 1)
        result["ratio_live"] = round(seconds / result["dvc_repro_s"], 2)
        result["airflow_live_pss"] = memory.summary()
    ratios = [result[k] for k in ("ratio_dags_test", "ratio_live") if k in result]
    result["ratio"] = ratios[0]
    result["target_ratio"] = 1.3
    result["within_target"] = all(r <= 1.3 for r in ratios)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="ci-airflow", help="profiles/<name>.yaml (default: ci-airflow)")
    parser.add_argument("--airflow", default="dags-test", choices=["dags-test", "live", "both"])
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = bench(args.profile, args.airflow, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="par-orch-bench-") as tmp:
            result = bench(args.profile, args.airflow, Path(tmp))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
