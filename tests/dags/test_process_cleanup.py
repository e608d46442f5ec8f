"""What the Airflow tests rely on to leave no process behind: a command's whole tree is
stopped by process group, including descendants that moved to groups of their own (as
Airflow's task runners and BashOperator commands do), on timeout as on success."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from tests.harness.airflow import airflow_env
from tests.harness.processes import airflow_pss_kib, run_group, spawn, stop_tree

# A parent that starts a child in a new session (its own process group), then waits.
TREE = "setsid sleep 300 & echo $! > {pidfile}; sleep 300"


def wait_for(path: Path, timeout: float = 10) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise TimeoutError(path)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_tree_stops_descendants_in_other_process_groups(tmp_path):
    pidfile = tmp_path / "child.pid"
    proc = spawn(["bash", "-c", TREE.format(pidfile=pidfile)], dict(os.environ), tmp_path / "log")
    child = wait_for(pidfile)
    deadline = time.time() + 10
    while os.getpgid(child) == os.getpgid(proc.pid) and time.time() < deadline:
        time.sleep(0.05)  # until setsid has run
    assert os.getpgid(child) != os.getpgid(proc.pid)
    stop_tree(proc, grace=5)
    assert proc.poll() is not None and gone(child)


def test_run_group_kills_the_tree_on_timeout(tmp_path):
    pidfile = tmp_path / "child.pid"
    code, seconds = run_group(["bash", "-c", TREE.format(pidfile=pidfile)], dict(os.environ), tmp_path / "log", 1)
    assert code == -9 and seconds < 30
    assert gone(wait_for(pidfile))


def test_airflow_env_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_HOME", "/root/airflow")
    monkeypatch.setenv("AIRFLOW__CORE__PARALLELISM", "32")
    env = airflow_env(tmp_path / "home", tmp_path / "runs", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"})
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home") and env["AIRFLOW__CORE__PARALLELISM"] == "2"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(f"sqlite:///{tmp_path}")
    assert env["PAR_RUNNER"] == "local" and env["PAR_RUNS_ROOT"] == str(tmp_path / "runs")


def test_airflow_memory_leaves_component_processes_out(tmp_path):
    """PSS is summed over the Airflow side of a tree, not over the component commands."""
    code = "import time; x = bytes(range(256)) * (1 << 18); time.sleep(60)"
    shell = f"{sys.executable} -c '{code}' components.fake & exec sleep 60"
    proc = subprocess.Popen(["bash", "-c", shell], start_new_session=True)
    try:
        time.sleep(1.5)
        component = [c for c in psutil.Process(proc.pid).children() if "components.fake" in c.cmdline()]
        assert component and component[0].memory_full_info().pss > 60 << 20
        total = airflow_pss_kib([proc.pid])
        assert 0 < total < 16 << 10  # the parent only: the 64 MiB "component" is left out
    finally:
        stop_tree(proc, grace=5)


def test_run_group_stops_orphans_that_left_the_tree(tmp_path):
    """A command whose parent has exited is re-parented to init; its tag still finds it."""
    pidfile = tmp_path / "child.pid"
    shell = f"setsid sleep 300 & echo $! > {pidfile}; sleep 0.5"
    code, _ = run_group(["bash", "-c", shell], dict(os.environ), tmp_path / "log", 30)
    assert code == 0 and gone(wait_for(pidfile))


def test_postgres_server_leaves_no_process_or_folder_even_when_its_user_fails(servers):
    """The live Airflow test's metadata DB: a real Postgres, stopped by process group and
    its cluster folder removed, also when the code using it raises."""
    import psycopg2

    from tests.harness.servers import postgres_server

    class PlannedError(Exception):
        pass

    seen: dict[str, Any] = {}
    with contextlib.suppress(PlannedError), postgres_server(database="probe") as url:
        port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="par", dbname="probe")
        seen["db"] = conn.get_dsn_parameters()["dbname"]
        conn.close()
        server = next(
            p for p in psutil.process_iter(["cmdline"]) if ["-p", str(port)] == (p.info["cmdline"] or [])[5:7]
        )
        seen["pids"] = [server.pid] + [c.pid for c in server.children(recursive=True)]
        seen["root"] = Path(server.info["cmdline"][2]).parent  # postgres -D <root>/data
        raise PlannedError
    assert seen["db"] == "probe" and len(seen["pids"]) > 1  # the postmaster and its workers
    assert all(gone(pid) for pid in seen["pids"])
    assert seen["root"].name.startswith("par-postgres-") and not seen["root"].exists()


def test_redis_server_answers_on_loopback_and_leaves_no_process(servers, tmp_path):
    import redis

    with servers.redis_server(tmp_path / "redis") as url:
        client = redis.Redis.from_url(url)
        assert url.startswith("redis://127.0.0.1:") and client.ping()
        pid = client.info("server")["process_id"]
        listening = {c.laddr.ip for c in psutil.Process(pid).net_connections("inet") if c.status == "LISTEN"}
        assert listening == {"127.0.0.1"}
    assert gone(pid)
