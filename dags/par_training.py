"""par_training: collect -> validate and videos -> validate_videos, then encode -> pretrain -> train
-> evaluate + score -> gate.

Triggered from the UI with the form below (its defaults are params.yaml's; with a
``profile``, the fields left at their defaults keep the profile's values). The first
step writes the run's complete params.yaml into the run's own folder
(``$PAR_RUNS_ROOT/<run id>``) and fails there, by name, on a bad value; every later
step runs its stage's command line from ``dvc.yaml`` in that folder, so concurrent runs
never touch each other's outputs, and every step is safe to retry (atomic outputs,
resumable training). Collect, validate and evaluate run once per task.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from components.orchestration import operators
from components.orchestration.runs import FORM_FIELDS, form_defaults, lookup

DEFAULTS = form_defaults()


def trigger_form() -> dict[str, Param]:
    form = {
        name: Param(lookup(DEFAULTS, field.path), description=field.description, **field.schema)
        for name, field in FORM_FIELDS.items()
    }
    form["profile"] = Param(
        None,
        type=["null", "string"],
        description="Optional: a file of profiles/ (smoke, ci-airflow, all-tasks, gpu) used instead of params.yaml "
        "as the base; the fields above that you leave at their defaults keep the profile's values.",
    )
    return form


@dag(
    dag_id="par_training",
    schedule=None,
    catchup=False,
    tags=["par", "training"],
    max_active_runs=2,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params=trigger_form(),
    user_defined_macros=operators.MACROS,
    doc_md=__doc__,
)
def par_training() -> None:
    @task
    def prepare(params: dict | None = None, run_id: str | None = None) -> list[str]:
        """Write the run's params.yaml (validated); return its tasks."""
        from components.orchestration.runs import prepare_training_run

        return prepare_training_run(dict(params or {}), run_id or "manual")

    tasks = prepare()
    collect = operators.stage("collect", tasks)
    validate = operators.stage("validate", tasks)
    videos = operators.stage("videos")
    validate_videos = operators.stage("validate_videos")
    encode = operators.stage("encode")
    pretrain = operators.stage("pretrain", gpu=True)
    train = operators.stage("train", gpu=True)
    evaluate = operators.stage("evaluate", tasks, gpu=True)
    score = operators.stage("score")
    gate = operators.stage("gate")
    tasks >> collect >> validate >> encode
    tasks >> videos >> validate_videos >> encode
    encode >> pretrain >> train >> [evaluate, score] >> gate


par_training()
