"""par_training: collect -> validate -> encode -> pretrain -> train -> evaluate + score -> gate.

Triggered from the UI with run parameters (defaults from params.yaml; with a
``profile``, the fields left at their defaults keep the profile's values). Every run
writes under its own folder (``<par_runs_root>/<run id>``), so concurrent runs never
touch each other's outputs; every step is a component command line that is safe to
retry (atomic outputs, resumable training).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, dag, task

from components.orchestration import default_params, operator, runner, stage_commands

DEFAULTS = default_params()
RUNNER = runner()


@dag(
    dag_id="par_training",
    schedule=None,
    catchup=False,
    tags=["par", "training"],
    max_active_runs=2,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True},
    params={
        "tasks": Param(DEFAULTS["tasks"], type="array", items={"type": "string"}, description="ManiSkill tasks"),
        "demos_per_task": Param(DEFAULTS["collect"]["demos_per_task"], type="integer", minimum=1),
        "model_size": Param(DEFAULTS["model"]["size"], enum=["tiny", "small", "base", "paper"]),
        "model_kind": Param(DEFAULTS["model"].get("kind", "par"), enum=["par", "bc"]),
        "pretrain_steps": Param(DEFAULTS["pretrain"]["steps"], type="integer", minimum=1),
        "train_steps": Param(DEFAULTS["train"]["steps"], type="integer", minimum=1),
        "episodes": Param(DEFAULTS["evaluate"]["episodes"], type="integer", minimum=1),
        "eval_shards": Param(DEFAULTS["evaluate"].get("shards", 1), type="integer", minimum=1),
        "min_wilson_low": Param(DEFAULTS["gate"]["min_wilson_low"], type="object"),
        "profile": Param(
            None,
            type=["null", "string"],
            description="optional profiles/<name>.yaml (e.g. smoke, ci-airflow) used as the base; "
            "fields left at their defaults keep the profile's values",
        ),
    },
    doc_md=__doc__,
)
def par_training() -> None:
    @task
    def plan(params: dict | None = None, run_id: str | None = None) -> dict:
        """Write the run's params.yaml (validated) and every step's command line."""
        import sys

        from components.orchestration import build_plan

        return build_plan(RUNNER, sys.executable, dict(params or {}), run_id or "manual")

    steps = plan()
    collect = operator("collect", stage_commands(steps, "collect"), mapped=True)
    validate = operator("validate", stage_commands(steps, "validate"), mapped=True)
    encode = operator("encode", steps["encode"])
    pretrain = operator("pretrain", steps["pretrain"], gpu=True)
    train = operator("train", steps["train"], gpu=True)
    evaluate = operator("evaluate", stage_commands(steps, "evaluate"), mapped=True, gpu=True)
    merge = operator("merge", stage_commands(steps, "merge"), mapped=True)
    score = operator("score", steps["score"])
    # merge is skipped when evaluation is not sharded (nothing to merge): gate then runs
    # as long as nothing upstream failed.
    gate = operator("gate", steps["gate"], trigger_rule="none_failed")
    steps >> collect >> validate >> encode >> pretrain >> train >> [evaluate, score]
    evaluate >> merge >> gate
    score >> gate


par_training()
