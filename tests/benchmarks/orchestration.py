"""The same small profile through ``dvc repro`` and through Airflow: the cost of orchestration.

    python -m tests.benchmarks.orchestration [--profile ci-airflow] [--airflow dags-test|live|both]

Runs the pipeline once with ``dvc repro`` on a copy of the repository, and once through
Airflow: ``airflow dags test par_training`` (the default) and/or a live stack
(api-server, scheduler, dag-processor on 127.0.0.1, triggered through the REST API).
Prints one JSON object: both wall times, their ratio (target <= 1.3) and the Airflow
processes' memory (PSS summed over them, from /proc/<pid>/smaps_rollup; the component
processes that the tasks start are left out: they are the same under DVC).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from tests.harness.airflow import AIRFLOW, AirflowStack, DagRunFailedError, airflow_env, dags_test_state, db_migrate
from tests.harness.processes import MemorySampler, airflow_pss_kib, spawn, stop_tree
from tests.harness.project import BIN, REPO, dvc_repro, project_copy


def base_environment() -> dict[str, str]:
    """This process's environment without its Airflow and MLflow settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_"))}
    base["PATH"] = f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    base["DVC_NO_ANALYTICS"] = "1"
    base["MS_SKIP_ASSET_DOWNLOAD_PROMPT"] = "1"
    if (REPO / ".vulkan" / "lvp_icd.json").is_file():  # the copy has no .vulkan of its own
        base.setdefault("VK_ICD_FILENAMES", str(REPO / ".vulkan" / "lvp_icd.json"))
    return base


def time_dags_test(conf: dict[str, Any], home: Path) -> dict[str, Any]:
    """``airflow dags test par_training``: its wall time and the Airflow processes' PSS."""
    env = airflow_env(home, home / "runs", {"MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
    started = time.perf_counter()
    db_migrate(env, home / "migrate.log")
    result: dict[str, Any] = {"airflow_db_migrate_s": round(time.perf_counter() - started, 1)}
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
    return result | {"airflow_dags_test_s": round(seconds, 1), "airflow_dags_test_pss": memory.summary()}


def time_live(conf: dict[str, Any], home: Path) -> dict[str, Any]:
    """A live stack: its start, idle PSS, and one triggered run's wall time and PSS."""
    stack = AirflowStack(home, home / "runs", {"MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"})
    started = time.perf_counter()
    with stack:
        result: dict[str, Any] = {"airflow_live_start_s": round(time.perf_counter() - started, 1)}
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
    return result | {"airflow_live_run_s": round(seconds, 1), "airflow_live_pss": memory.summary()}


def bench(profile: str, mode: str, workdir: Path) -> dict[str, Any]:
    params = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())
    result: dict[str, Any] = {"profile": profile, "tasks": params.get("tasks"), "cpus": os.cpu_count()}
    repo = project_copy(workdir / "dvc", params)
    env = base_environment() | {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'dvc' / 'mlflow.db'}"}
    result["dvc_repro_s"] = round(
        dvc_repro(repo, env | {"PAR_PIPELINE_KEY": "bench"}, workdir / "dvc" / "repro.log"), 1
    )
    conf = {"profile": profile}
    if mode in ("dags-test", "both"):
        result |= time_dags_test(conf, workdir / "airflow-test")
        result["ratio_dags_test"] = round(result["airflow_dags_test_s"] / result["dvc_repro_s"], 2)
    if mode in ("live", "both"):
        result |= time_live(conf, workdir / "airflow-live")
        result["ratio_live"] = round(result["airflow_live_run_s"] / result["dvc_repro_s"], 2)
    ratios = [result[k] for k in ("ratio_dags_test", "ratio_live") if k in result]
    return result | {"ratio": ratios[0], "target_ratio": 1.3, "within_target": all(r <= 1.3 for r in ratios)}


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
