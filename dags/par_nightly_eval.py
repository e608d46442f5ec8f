"""par_nightly_eval: every night, re-evaluate the champion on fixed seeds and compare.

The champion (alias ``champion`` of params ``gate.model_name``) is evaluated on the
same seeds as at promotion (params.yaml's, or those of the profile named by the run
parameter ``profile``); a success rate below the recorded 95% interval fails the
run with a message naming the task and both rates, tags the model version, and calls
the alert hook (a log line always; a webhook when the Airflow connection
``par_alerts`` exists, its host being the URL).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from components.orchestration import operators

FOLDER = "{{ nightly_folder(run_id) }}"


def champion_evaluation(item: dict) -> str:
    """The evaluation command line of one task of the nightly run."""
    return operators.component_command(
        "evaluate", "--params", "params.yaml", "--model-uri", item["model_uri"], "--task", item["task"],
        "--out", f"eval/{item['task']}",
    )  # fmt: skip


@dag(
    dag_id="par_nightly_eval",
    schedule="0 3 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["par", "evaluation"],
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "retry_exponential_backoff": True},
    params={
        "profile": Param(
            None,
            type=["null", "string"],
            description="Optional: a file of profiles/ whose tasks and evaluation seeds are used instead of "
            "params.yaml's (the seeds must be those the champion was evaluated on at promotion).",
        ),
    },
    user_defined_macros=operators.MACROS,
    doc_md=__doc__,
)
def par_nightly_eval() -> None:
    @task
    def prepare(params: dict | None = None, run_id: str | None = None, ti: Any = None) -> list[dict]:
        """Write the run's params.yaml; return one evaluation a task; pass on the alert webhook."""
        from components.orchestration.runs import prepare_nightly_run

        if ti is not None:
            ti.xcom_push(key="webhook", value=webhook_url() or "")
        return prepare_nightly_run(dict(params or {}), run_id or "manual")

    evaluations = prepare()
    evaluate = operators.component(
        "evaluate_champion", evaluations.map(champion_evaluation), mapped=True, folder=FOLDER
    )
    check = operators.component(
        "check_regression",
        operators.component_command("regression", "--params", "params.yaml", "--eval-root", "eval",
                                    "--out", "regression.json"),
        folder=FOLDER,
        retries=0,
        env={"PAR_ALERT_WEBHOOK": "{{ ti.xcom_pull(task_ids='prepare', key='webhook') }}"},
    )  # fmt: skip
    evaluations >> evaluate >> check


def webhook_url() -> str | None:
    """The alert webhook from the Airflow connection ``par_alerts``, when one is set."""
    from airflow.sdk import BaseHook

    try:
        connection = BaseHook.get_connection("par_alerts")
    except Exception:  # no such connection: alerts go to the log only
        return None
    if connection.host and connection.host.startswith(("http://", "https://")):
        return connection.host
    return connection.get_uri() if connection.host else None


par_nightly_eval()
