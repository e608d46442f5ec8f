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

from airflow.sdk import Param, dag, task

from components.orchestration import operator, runner, stage_commands

RUNNER = runner()


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
            description="optional profiles/<name>.yaml whose tasks and seeds are evaluated",
        ),
    },
    doc_md=__doc__,
)
def par_nightly_eval() -> None:
    @task
    def plan(params: dict | None = None, run_id: str | None = None) -> dict:
        """Write the run's params.yaml and the evaluation and check command lines."""
        import sys

        from components.orchestration import nightly_plan

        return nightly_plan(RUNNER, sys.executable, run_id or "manual", webhook_url(), dict(params or {}))

    steps = plan()
    evaluate = operator("evaluate_champion", stage_commands(steps, "evaluate"), mapped=True)
    check = operator("check_regression", steps["check"], retries=0)
    evaluate >> check


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
