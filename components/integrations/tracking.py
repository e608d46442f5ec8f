"""MLflow tracking: one run per stage, nested under one run per pipeline execution.

The tracking URI comes from ``MLFLOW_TRACKING_URI``; by default it is an embedded
SQLite store in the repository (``sqlite:///mlflow.db``), so ``dvc repro`` needs no
server. A pipeline run is identified by ``PAR_PIPELINE_KEY`` (Airflow passes its DAG
run id), by the DVC experiment's name under ``dvc exp run -n NAME`` (DVC sets
``DVC_EXP_NAME``), or else by the hash of params.yaml and the git commit: every stage
of one ``dvc repro`` nests under the same parent run. Under a DVC experiment every
run carries its name: the parent run is called NAME, each stage's run NAME/stage, and
all are tagged ``par.experiment``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = os.environ.get("PAR_MLFLOW_EXPERIMENT", "par")
log = logging.getLogger("components.integrations.tracking")


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


def _mlflow():
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(EXPERIMENT)
    return mlflow


def experiment_name() -> str | None:
    """The DVC experiment this stage runs in, if any (``dvc exp run -n NAME``)."""
    return os.environ.get("DVC_EXP_NAME") or None


def pipeline_key(params_path: str | Path) -> str:
    if os.environ.get("PAR_PIPELINE_KEY"):
        return os.environ["PAR_PIPELINE_KEY"]
    if experiment_name():
        return f"dvc-exp-{experiment_name()}"
    digest = hashlib.sha256(Path(params_path).read_bytes())
    digest.update((git_commit() or "").encode())
    return digest.hexdigest()[:16]


def git_commit() -> str | None:
    """The checkout's commit (with ``+changes`` when the tree differs from it), if it is a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True)  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def pipeline_run_id(params_path: str | Path) -> str:
    """The parent run of this pipeline execution, created on first use."""
    mlflow = _mlflow()
    key = pipeline_key(params_path)
    found = mlflow.search_runs(
        filter_string=f"tags.`par.pipeline_key` = '{key}' and tags.`par.kind` = 'pipeline'",
        max_results=1,
        output_format="list",
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    tags = {"par.pipeline_key": key, "par.kind": "pipeline", "mlflow.runName": experiment_name() or f"pipeline-{key}"}
    run = client.create_run(experiment.experiment_id, tags=tags | _experiment_tag())
    client.set_terminated(run.info.run_id)
    return run.info.run_id


@contextlib.contextmanager
def stage_run(
    stage: str, params_path: str | Path, run_id: str | None = None, tags: dict[str, str] | None = None
) -> Iterator[Any]:
    """Start (or resume, given ``run_id``) the MLflow run of a stage, nested in the pipeline run."""
    mlflow = _mlflow()
    parent = pipeline_run_id(params_path)
    if run_id is not None:
        try:
            mlflow.get_run(run_id)
        except Exception:  # the run is gone (another tracking store): start afresh
            log.warning("MLflow run %s not found in %s; starting a new run", run_id, tracking_uri())
            run_id = None
    name = f"{experiment_name()}/{stage}" if experiment_name() else stage
    kwargs: dict[str, Any] = {"run_id": run_id} if run_id else {"run_name": name}
    tags = {"mlflow.parentRunId": parent, "par.stage": stage, **_experiment_tag(), **(tags or {})}
    with mlflow.start_run(**kwargs, tags=tags, log_system_metrics=True) as run:
        yield run


def log_study(name: str, files: list[Path]) -> None:
    """A study's table, plot and results, as one MLflow run named ``<name>/summary``
    (one after every cell: the newest holds every cell so far)."""
    mlflow = _mlflow()
    with mlflow.start_run(run_name=f"{name}/summary", tags={"par.kind": "study", "par.study": name}):
        for path in files:
            mlflow.log_artifact(str(path), "study")


def end_abandoned_run(run_id: str, why: str) -> None:
    """Mark a stage's run that a killed process left RUNNING as FAILED, saying why
    (a run that has ended already is left as it is)."""
    from mlflow.exceptions import MlflowException

    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    try:
        status = client.get_run(run_id).info.status
    except MlflowException:  # gone (another tracking store): nothing to end
        return
    if status == "RUNNING":
        client.set_tag(run_id, "par.ended", why)
        client.set_terminated(run_id, status="FAILED")
        log.warning("MLflow run %s was left running by a killed process: marked FAILED (%s)", run_id, why)


def _experiment_tag() -> dict[str, str]:
    return {"par.experiment": name} if (name := experiment_name()) else {}
