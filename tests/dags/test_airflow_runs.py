"""The DAGs run end to end on real servers: an MLflow server whose artifacts live on S3
(moto's S3 server on loopback), and Airflow three ways: the team host's CeleryExecutor
(Postgres, Redis, two Celery workers) running two runs of par_training at once,
triggered through REST and through the UI in headless Chromium, one of them losing a
worker mid-task; the LocalExecutor of one machine (SQLite, what ``airflow standalone``
runs) for a nightly run of the model the Celery runs registered; and ``airflow dags
test`` for a nightly run that finds a planted regression. Every process is stopped by
its process group in teardown, also when a test fails (the servers' context managers
and AirflowStack.stop run in finally).

Every run uses the ci-airflow profile (PushCube only, and PickCube too in the REST run,
so that every mapped step has two instances). The three tasks run end to end under
``dvc repro`` (tests/test_dvc.py) and in the component tests.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from components.orchestration.runs import nightly_folder as nightly_folder_of
from components.orchestration.runs import run_folder
from tests.harness.airflow import (
    AirflowStack,
    Celery,
    DagRunFailedError,
    airflow_env,
    dags_test,
    db_migrate,
)
from tests.harness.browser import ARTIFACTS, browser_page
from tests.harness.servers import mlflow_server, moto_server, postgres_server, redis_server

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "par-mlflow"
MODEL = "par-policy"
PROFILE = "ci-airflow"
WORKERS = ("par-worker-a", "par-worker-b")  # the Celery workers, each with a queue of its own name
REST_CONF = {"profile": PROFILE, "tasks": ["PushCube-v1", "PickCube-v1"]}  # two instances a mapped step
KILLED = "train"  # the step whose worker is killed mid-task
ARTIFACT_PREFIX = "live"  # the artifact root on S3: s3://par-mlflow/live
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

# A pipeline run is minutes on 2 cores (far more when they are shared).
pytestmark = pytest.mark.timeout(3600)


def s3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDS["AWS_DEFAULT_REGION"],
    )


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, servers: Any) -> Iterator[str]:
    """moto's S3 server with the artifact bucket; yields its endpoint."""
    with moto_server(tmp_path_factory.mktemp("moto")) as endpoint:
        s3_client(endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint


@contextlib.contextmanager
def mlflow_on_s3(root: Path, endpoint: str, prefix: str) -> Iterator[dict[str, str]]:
    """An MLflow server (SQLite backend) whose artifact root is s3://par-mlflow/<prefix>,
    written by the clients through MLFLOW_S3_ENDPOINT_URL. Yields the environment every
    component needs."""
    artifacts = ["--default-artifact-root", f"s3://{BUCKET}/{prefix}", "--no-serve-artifacts"]
    env = {"MLFLOW_S3_ENDPOINT_URL": endpoint, **CREDS}
    with mlflow_server(root, artifacts, env=env, timeout=120) as uri:
        yield {"MLFLOW_TRACKING_URI": uri, "MLFLOW_S3_ENDPOINT_URL": endpoint, **CREDS}


@pytest.fixture(scope="module")
def tracking(s3: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The MLflow server of the live runs; the nightly tests read its registry after the
    Celery stack has stopped."""
    with mlflow_on_s3(tmp_path_factory.mktemp("mlflow"), s3, ARTIFACT_PREFIX) as env:
        yield env


def mlflow_client(tracking: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """An MlflowClient of that server, with this process's environment pointed at it."""
    for key, value in tracking.items():
        monkeypatch.setenv(key, value)
    import mlflow

    mlflow.set_tracking_uri(tracking["MLFLOW_TRACKING_URI"])
    return mlflow.MlflowClient(tracking["MLFLOW_TRACKING_URI"])


@pytest.fixture
def client(tracking: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    return mlflow_client(tracking, monkeypatch)


# ------------------------------------------------------------------ live Airflow


@contextlib.contextmanager
def logged_in_page(url: str, user: str, password: str) -> Iterator[Any]:
    """A headless Chromium page logged in to the Airflow UI (Debian's chromium)."""
    with browser_page() as page:
        page.goto(f"{url}/dags/par_training")
        page.get_by_label("Username").fill(user)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda u: "/auth/login" not in u, timeout=60_000)
        yield page


def ui_trigger(url: str, user: str, password: str, shots: Path) -> str:
    """Log in, open par_training, open the trigger form, fill two fields, trigger;
    returns the new run's id (from the UI's own POST to the REST API)."""
    with logged_in_page(url, user, password) as page:
        page.goto(f"{url}/dags/par_training")
        page.get_by_role("button", name="Trigger").first.click()
        form = page.get_by_role("dialog")
        form.locator("#element_profile").fill("ci-airflow")
        form.locator("input[name=element_train_steps]").fill("4")
        form.locator("input[name=element_train_steps]").blur()
        page.screenshot(path=str(shots / "airflow-trigger-form.png"))
        with page.expect_response(lambda r: r.url.endswith("/dagRuns") and r.request.method == "POST") as answer:
            form.get_by_role("button", name="Trigger").last.click()
        assert answer.value.ok, answer.value.text()
        run = answer.value.json()
        assert run["conf"]["profile"] == "ci-airflow" and run["conf"]["train_steps"] == 4
        return run["dag_run_id"]


def ui_screenshot_run(url: str, user: str, password: str, run_id: str, shots: Path) -> None:
    with logged_in_page(url, user, password) as page:
        page.goto(f"{url}/dags/par_training/runs/{run_id}")
        page.get_by_text("success").first.wait_for(timeout=60_000)
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(shots / "airflow-finished-run.png"), full_page=True)
        (shots / "airflow-finished-run.html").write_text(page.content())


@dataclass
class CeleryRuns:
    """What the live Celery stack did, gathered before it stopped (the tests read it)."""

    home: Path
    rest_run: str
    ui_run: str
    states: dict[str, str]
    runs: dict[str, dict[str, Any]]  # the REST API's record of each DAG run
    folders: dict[str, Path]
    instances: dict[str, list[dict[str, Any]]]  # every task instance of each run (latest try)
    prepared: list[str]  # the tasks the REST run's prepare returned (mapped over)
    versions: set[str]  # every version of the model in that stack's registry
    loss: dict[str, Any]  # the worker killed mid-task, and what became of its task
    stage_runs: list[Any]  # the MLflow runs of the killed stage in the REST run's pipeline run

    def gate(self, run_id: str) -> dict[str, Any]:
        """The gate's decision in run ``run_id``'s folder (metrics/gate.json)."""
        return json.loads((self.folders[run_id] / "metrics" / "gate.json").read_text())


@pytest.fixture(scope="module")
def celery_runs(tracking: dict[str, str], tmp_path_factory: pytest.TempPathFactory, simulator: None) -> CeleryRuns:
    """The team host's executor, live: Postgres, Redis, api-server, scheduler,
    dag-processor and two Celery workers (one task at a time each). Two runs of
    par_training at once, one triggered through REST (two tasks, so every mapped step
    has an instance on each worker's queue) and one through the UI; while the REST run
    trains, the worker running it is killed with everything below it, and started again
    once the step's retry runs on the other worker."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path_factory.mktemp("celery")
    home = root / "airflow"
    with contextlib.ExitStack() as cleanup:
        # Two runs, two workers, the scheduler and the UI write to the metadata DB at once
        # (and Celery's results go there too): Postgres, as in production.
        database = cleanup.enter_context(postgres_server())
        broker = cleanup.enter_context(redis_server(root / "redis"))
        # The runs share 2 cores: one thread per component process (no OpenMP
        # oversubscription), and no periodic re-parsing of unchanged DAG files.
        extra = tracking | {
            "OMP_NUM_THREADS": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
        }
        # Two tasks a worker: four slots keep both cores busy while a worker's own queue
        # waits; a retry waits 2 s (the site policy), not par_training's 30 s and more.
        celery = Celery(broker, f"db+{database}", WORKERS, heartbeat_timeout=20, concurrency=2, retry_delay_s=2)
        stack = cleanup.enter_context(AirflowStack(home, home / "runs", extra, parallelism=4, celery=celery))
        stack.wait_dag("par_training")
        rest_run = stack.trigger("par_training", REST_CONF)
        try:
            ui_run = ui_trigger(stack.url, stack.user, stack.password, ARTIFACTS)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\napi-server log:\n{stack.log_tail('api-server', 6000)}") from exc
        import mlflow

        client = mlflow.MlflowClient(tracking["MLFLOW_TRACKING_URI"])
        loss = lose_worker_mid_task(stack, client, rest_run, KILLED)
        both = [rest_run, ui_run]
        states = stack.wait_runs("par_training", both, timeout=1500)
        if set(states.values()) != {"success"}:
            pytest.fail(f"runs {states}; logs under {home / 'logs'}")
        ui_screenshot_run(stack.url, stack.user, stack.password, ui_run, ARTIFACTS)
        both = [rest_run, ui_run]
        return CeleryRuns(
            home=home,
            rest_run=rest_run,
            ui_run=ui_run,
            states=states,
            runs={r: stack.run("par_training", r) for r in both},
            folders=run_folders(home / "runs", [rest_run, ui_run]),
            instances={r: stack.task_instances("par_training", r) for r in both},
            prepared=stack.xcom("par_training", rest_run, "prepare"),
            versions={v.version for v in client.search_model_versions(f"name = '{MODEL}'")},
            loss=loss | {"tries": stack.tries("par_training", rest_run, KILLED)},
            stage_runs=stage_runs(client, rest_run, KILLED),
        )


def run_folders(root: Path, run_ids: list[str]) -> dict[str, Path]:
    """Each run's folder, as the DAG names it under the runs root ``root``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAR_RUNS_ROOT", str(root))
        return {r: Path(run_folder(r)) for r in run_ids}


def stage_runs(client: Any, run_id: str, stage: str) -> list[Any]:
    """The MLflow runs of ``stage`` nested under the pipeline run of DAG run ``run_id``."""
    experiment = client.get_experiment_by_name("par")
    if experiment is None:
        return []
    key = f"par_training-{run_id}"
    parents = client.search_runs([experiment.experiment_id], f"tags.`par.pipeline_key` = '{key}'")
    if not parents:
        return []
    query = f"tags.`par.stage` = '{stage}' and tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'"
    return client.search_runs([experiment.experiment_id], query)


def lose_worker_mid_task(stack: AirflowStack, client: Any, run_id: str, task_id: str) -> dict[str, Any]:
    """Wait until ``task_id`` of ``run_id`` runs and its stage has opened its MLflow run
    (it has begun writing), kill the worker that runs it (SIGKILL to the worker and
    every process below it), wait until a retry runs elsewhere, start the worker again
    (a host that comes back). Returns the killed worker's name and the retry's worker."""
    deadline = time.time() + 1200
    while True:
        tries = stack.tries("par_training", run_id, task_id)
        if tries and tries[-1]["state"] == "running" and stack_runs_open(client, run_id, task_id):
            victim = tries[-1]["hostname"]
            break
        if (tries and tries[-1]["state"] in ("success", "failed")) or time.time() > deadline:
            pytest.fail(f"{task_id} of {run_id} was not caught running (tries {tries}); logs in {stack.home}")
        fail_if_ended(stack, run_id, f"before {task_id} ran")
        time.sleep(0.2)
    killed = stack.kill_worker(victim)
    killed_at = time.time()
    while True:
        tries = stack.tries("par_training", run_id, task_id)
        if len(tries) > 1 and tries[-1]["state"] in ("running", "success"):
            break
        if time.time() > killed_at + 600:
            pytest.fail(f"no retry of {task_id} 600 s after its worker was killed: {tries}")
        fail_if_ended(stack, run_id, f"before {task_id}'s retry ran")
        time.sleep(1)
    waited = time.time() - killed_at
    stack.start_worker(victim)
    return {"victim": victim, "killed_pids": killed, "retry_host": tries[-1]["hostname"], "retried_after": waited}


def fail_if_ended(stack: AirflowStack, run_id: str, when: str) -> None:
    """Fail at once, naming the failed tasks and the end of the first one's last log, when
    run ``run_id`` has ended ``when`` (a task that failed on every try ends the run;
    waiting on would only run into the deadline)."""
    state = stack.run_state("par_training", run_id)
    if state not in ("success", "failed"):
        return
    failed = [ti for ti in stack.task_instances("par_training", run_id) if ti["state"] == "failed"]
    names = [f"{ti['task_id']}[{ti['map_index']}]" for ti in failed]
    first = f"/task_id={failed[0]['task_id']}/" if failed else ""
    runs = (stack.home / "logs").rglob("attempt=*.log")
    logs = [p for p in runs if f"/run_id={run_id}/" in str(p) and first in str(p)]
    log = max(logs, key=lambda p: p.stat().st_mtime, default=None)
    tail = log.read_text(errors="replace")[-3000:] if log else "(no task log)"
    pytest.fail(f"run {run_id} ended {state} {when}; failed tasks {names}; log {log}:\n{tail}")


def stack_runs_open(client: Any, run_id: str, stage: str) -> bool:
    return any(r.info.status == "RUNNING" for r in stage_runs(client, run_id, stage))


def test_live_airflow_runs_triggered_from_rest_and_ui_concurrently(celery_runs):
    c = celery_runs
    rest_run, ui_run, folders = c.rest_run, c.ui_run, c.folders
    assert c.prepared == REST_CONF["tasks"]  # the tasks mapped over
    assert folders[rest_run] != folders[ui_run]
    assert all(f.is_dir() for f in folders.values())
    steps = {r: yaml.safe_load((f / "params.yaml").read_text())["train"]["steps"] for r, f in folders.items()}
    assert steps == {rest_run: 3, ui_run: 4}  # the profile's value; the value typed into the form
    gates = {r: c.gate(r) for r in folders}
    assert {g["version"] for g in gates.values()} == c.versions == {"1", "2"}  # one version each
    a, b = c.runs[rest_run], c.runs[ui_run]
    assert a["start_date"] < b["end_date"] and b["start_date"] < a["end_date"]  # they overlapped
    assert (ARTIFACTS / "airflow-trigger-form.png").stat().st_size > 10_000
    assert (ARTIFACTS / "airflow-finished-run.png").stat().st_size > 10_000


def test_celery_workers_ran_the_mapped_steps_on_their_own_queues(celery_runs):
    """Every mapped instance ran on the worker whose queue it was routed to: instance i
    of collect, validate and evaluate on worker i (both workers worked on both runs'
    pipelines); every other step on either worker, from the shared queue."""
    for run_id, instances in celery_runs.instances.items():
        assert {ti["state"] for ti in instances} == {"success"}, run_id
        assert {ti["hostname"] for ti in instances} <= set(WORKERS)
        mapped = {(ti["task_id"], ti["map_index"]): ti for ti in instances if ti["map_index"] >= 0}
        count = len(REST_CONF["tasks"]) if run_id == celery_runs.rest_run else 1
        assert set(mapped) == {(t, i) for t in ("collect", "validate", "evaluate") for i in range(count)}
        for (task_id, index), ti in mapped.items():
            assert ti["queue"] == WORKERS[index] and ti["hostname"] == WORKERS[index], (task_id, ti)
        assert all(ti["queue"] == "default" for ti in instances if ti["map_index"] < 0)
    rest = celery_runs.instances[celery_runs.rest_run]
    assert {ti["hostname"] for ti in rest if ti["task_id"] in ("collect", "evaluate")} == set(WORKERS)


def test_a_killed_worker_s_task_is_retried_on_the_other_and_leaves_no_partial_output(celery_runs):
    """The worker running the REST run's train step was killed mid-task (its MLflow run
    open): the step failed on that worker (no heartbeat), ran again on the other one, and
    the run ended with its model registered once, no output half-written or doubled."""
    loss, tries = celery_runs.loss, celery_runs.loss["tries"]
    print(f"{loss['victim']} killed; {KILLED} retried on {loss['retry_host']} {loss['retried_after']:.0f} s later")
    assert celery_runs.states[celery_runs.rest_run] == "success"
    assert [t["hostname"] for t in tries] == [loss["victim"], loss["retry_host"]]
    assert loss["retry_host"] != loss["victim"] and {t["state"] for t in tries} == {"failed", "success"}
    assert tries[0]["state"] == "failed" and tries[-1]["state"] == "success"
    assert not any(psutil.pid_exists(pid) and not zombie(pid) for pid in loss["killed_pids"])
    # MLflow: one finished run of the step; the killed one (if it was not resumed) marked failed.
    statuses = sorted(r.info.status for r in celery_runs.stage_runs)
    assert statuses.count("FINISHED") == 1 and "RUNNING" not in statuses, statuses
    for abandoned in (r for r in celery_runs.stage_runs if r.info.status != "FINISHED"):
        assert abandoned.info.status == "FAILED" and abandoned.data.tags.get("par.ended"), abandoned.data.tags
    # Files: nothing half-written (atomic outputs: no temporary folder left), the bundle complete.
    folder = celery_runs.folders[celery_runs.rest_run]
    leftovers = [p for p in folder.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers
    assert celery_runs.gate(celery_runs.rest_run)["version"] in celery_runs.versions


def zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------ airflow dags test


def alias_version(client: Any, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(MODEL, alias).version)
    except MlflowException:
        return None


def last_gated(celery_runs: CeleryRuns) -> str:
    """The run whose gate step ended last: it set ``candidate`` last."""

    def gate_end(run_id: str) -> str:
        (gate,) = [ti for ti in celery_runs.instances[run_id] if ti["task_id"] == "gate"]
        return gate["end_date"]

    return max(celery_runs.runs, key=gate_end)


def test_training_dag_registers_a_version_and_moves_aliases_as_the_gate_decided(celery_runs, tracking, client):
    folder = celery_runs.folders[celery_runs.rest_run]
    params = yaml.safe_load((folder / "params.yaml").read_text())
    profile = yaml.safe_load((ROOT / "profiles" / f"{PROFILE}.yaml").read_text())
    # the profile's values (and the trigger's tasks), not params.yaml's
    assert params["tasks"] == REST_CONF["tasks"] and params["collect"]["demos_per_task"] == 2
    assert profile["collect"]["demos_per_task"] == 2
    version = client.get_model_version(MODEL, celery_runs.gate(celery_runs.rest_run)["version"])
    for task in REST_CONF["tasks"]:
        assert json.loads((folder / "metrics" / "eval" / f"{task}.json").read_text())["episodes"] == 2
        assert f"par.{task}.success_once" in version.tags and f"par.{task}.wilson_low" in version.tags

    gate = celery_runs.gate(last_gated(celery_runs))
    assert alias_version(client, "candidate") == gate["version"]
    if gate["promoted"]:
        assert alias_version(client, "champion") == gate["version"]
    else:
        assert gate["refusal_reasons"]
        assert alias_version(client, "champion") == gate["previous_champion"]  # unmoved (None: never set)

    # The models' files are on S3, and every stage's MLflow run nests under its DAG run's run.
    assert client.get_model_version(MODEL, gate["version"]).source.startswith(("models:/", "s3://"))
    s3 = s3_client(tracking["MLFLOW_S3_ENDPOINT_URL"])
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{ARTIFACT_PREFIX}/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert any(k.endswith("policy.json") for k in keys), keys[:20]
    experiment = client.get_experiment_by_name("par").experiment_id
    runs = client.search_runs([experiment], "tags.`par.kind` = 'pipeline'", max_results=5)
    keys = sorted(r.data.tags["par.pipeline_key"] for r in runs)
    assert keys == sorted(f"par_training-{r}" for r in celery_runs.runs)  # one pipeline run a DAG run


def plant_champion(client: Any, version: Any, inflate: dict[str, float] | None = None) -> str:
    """A new version of the same model files whose recorded success is ``inflate``d
    (a planted regression), or the version itself (an honest champion); alias champion."""
    if inflate is None:
        client.set_registered_model_alias(MODEL, "champion", version.version)
        return version.version
    tags = dict(version.tags)
    for task, rate in inflate.items():
        tags[f"par.{task}.success_once"] = str(rate)
        tags[f"par.{task}.wilson_low"] = str(rate - 0.05)
    import mlflow

    planted = str(mlflow.register_model(version.source, MODEL, tags=tags).version)
    client.set_registered_model_alias(MODEL, "champion", planted)
    return planted


@dataclass
class Nightly:
    """Where the nightly runs happen: an Airflow home of their own (SQLite) tracking into
    the live runs' MLflow server, and the version the REST run registered."""

    home: Path
    env: dict[str, str]
    version: str


@pytest.fixture(scope="module")
def nightly_site(celery_runs: CeleryRuns, tracking: dict[str, str], tmp_path_factory) -> Nightly:
    home = tmp_path_factory.mktemp("nightly")
    extra = tracking | {"OMP_NUM_THREADS": "1"}  # as the evaluation at promotion ran
    return Nightly(home, extra, celery_runs.gate(celery_runs.rest_run)["version"])


def nightly_on_local_executor(site: Nightly) -> Path:
    """par_nightly_eval triggered through REST on a live stack of the LocalExecutor
    (SQLite; what ``airflow standalone`` runs), no scheduled run of its own; returns the
    run's folder."""
    extra = site.env | {
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",  # unpaused, the DAG would also run at once for 03:00
    }
    with AirflowStack(site.home, site.home / "runs", extra, parallelism=1) as stack:
        assert stack.env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        stack.wait_dag("par_nightly_eval")
        run_id = stack.trigger("par_nightly_eval", {"profile": PROFILE})
        state = stack.wait_runs("par_nightly_eval", [run_id], timeout=900)[run_id]
        runs = stack.request("GET", "/api/v2/dags/par_nightly_eval/dagRuns")["dag_runs"]
    assert state == "success", f"par_nightly_eval {run_id} ended {state}; logs under {site.home / 'logs'}"
    assert [r["dag_run_id"] for r in runs] == [run_id]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PAR_RUNS_ROOT", str(site.home / "runs"))
        return Path(nightly_folder_of(run_id))


def test_nightly_eval_passes_for_an_honest_champion(nightly_site, client):
    """Through the LocalExecutor (the other nightly run is ``airflow dags test``)."""
    version = client.get_model_version(MODEL, nightly_site.version)
    plant_champion(client, version)
    folder = nightly_on_local_executor(nightly_site)
    result = json.loads((folder / "regression.json").read_text())
    assert result["version"] == version.version and result["regressions"] == []
    fresh = result["fresh"]["PushCube-v1"]
    assert fresh["episodes"] == 2  # the seeds the training run evaluated at promotion
    assert fresh["success_once"] == float(version.tags["par.PushCube-v1.success_once"])
    tags = client.get_model_version(MODEL, version.version).tags
    assert tags["par.nightly.status"] == "ok" and "par.nightly.checked_at" in tags


def test_nightly_eval_fails_on_a_planted_regression_naming_task_and_rates(nightly_site, client):
    """``airflow dags test`` of the nightly DAG, in the same Airflow home."""
    version = client.get_model_version(MODEL, nightly_site.version)
    achieved = float(version.tags["par.PushCube-v1.success_once"])
    if achieved > 0.9:
        pytest.skip("the trained model succeeded too often to plant a higher recorded rate")
    planted = plant_champion(client, version, {"PushCube-v1": 1.0})
    env = airflow_env(nightly_site.home, nightly_site.home / "runs", nightly_site.env)
    db_migrate(env, nightly_site.home / "migrate-dags-test.log")  # a no-op after the LocalExecutor's run
    with pytest.raises(DagRunFailedError) as failure:
        dags_test("par_nightly_eval", {"profile": PROFILE}, env, nightly_site.home / "nightly-planted.log", timeout=900)
    text = failure.value.log.read_text()
    message = (
        "PushCube-v1: success_once fell from 1.000 (recorded at promotion, 95% interval lower bound 0.950) "
        f"to {achieved:.3f} over 2 episodes"
    )
    assert message in text
    assert "check_regression" in text and "state=failed" in text
    assert client.get_model_version(MODEL, planted).tags["par.nightly.status"] == "regressed"
