"""The DAGs run end to end on real servers: MLflow servers whose artifacts live on S3
(moto's S3 server on loopback), Airflow either as ``airflow dags test`` or as a live
stack (api-server, scheduler, dag-processor; metadata on a Postgres of its own)
triggered through REST and through the UI in headless Chromium. Every process is
stopped by its process group in teardown, also when a test fails (the servers'
context managers and AirflowStack.stop run in finally).

To keep the wall time down, the ``airflow dags test`` run starts in the background
when the module starts and runs while the live-stack test runs (the live runs have an
MLflow server of their own, so that neither moves the other's aliases); the training
and nightly tests then wait for it. Every run here uses the ci-airflow profile
(PushCube only): three pipelines share 2 cores. The three tasks run end to end under
``dvc repro`` (tests/test_dvc.py) and in the component tests.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.orchestration.runs import run_folder
from tests.harness.airflow import (
    AIRFLOW,
    AirflowStack,
    DagRunFailedError,
    airflow_env,
    dags_test,
    dags_test_state,
    db_migrate,
)
from tests.harness.browser import ARTIFACTS, browser_page
from tests.harness.processes import spawn, stop_tree
from tests.harness.servers import mlflow_server, moto_server, postgres_server

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "par-mlflow"
MODEL = "par-policy"
PROFILE = "ci-airflow"
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
    with mlflow_on_s3(tmp_path_factory.mktemp("mlflow"), s3, "artifacts") as env:
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


class TrainingRun:
    """``airflow dags test par_training`` with the ci-airflow profile (runner local),
    started in the background; :meth:`result` waits for it."""

    def __init__(self, home: Path, tracking: dict[str, str]) -> None:
        self.home = home
        # One thread a component process: this run shares the 2 cores with the live runs.
        self.env = airflow_env(home, home / "runs", tracking | {"OMP_NUM_THREADS": "1"})
        self.log = home / "par_training.log"
        db_migrate(self.env, home / "migrate.log")
        self.started = time.perf_counter()
        cmd = [AIRFLOW, "dags", "test", "par_training", "-c", json.dumps({"profile": PROFILE})]
        self.proc = spawn(cmd, self.env, self.log)
        self._result: dict[str, Any] | None = None

    def result(self, timeout: float = 1800) -> dict[str, Any]:
        if self._result is None:
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                code = None
            state = dags_test_state(self.log)
            if code != 0 or state != "success":
                message = f"airflow dags test par_training: exit code {code}, run state {state}"
                raise DagRunFailedError(message, self.log)
            (folder,) = (self.home / "runs").iterdir()
            self._result = {
                "env": self.env,
                "home": self.home,
                "folder": folder,
                "seconds": time.perf_counter() - self.started,
                "gate": json.loads((folder / "metrics" / "gate.json").read_text()),
            }
        return self._result

    def stop(self) -> None:
        stop_tree(self.proc)


@pytest.fixture(scope="module")
def training_run(
    request: pytest.FixtureRequest, tracking: dict[str, str], tmp_path_factory: pytest.TempPathFactory, simulator: None
) -> Iterator[TrainingRun | None]:
    """Starts the training run at once when a selected test needs its model (else None)."""
    if not any("trained" in item.fixturenames for item in request.session.items):
        yield None
        return
    run = TrainingRun(tmp_path_factory.mktemp("airflow"), tracking)
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture(scope="module")
def trained(training_run: TrainingRun) -> dict[str, Any]:
    return training_run.result()


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


def test_live_airflow_runs_triggered_from_rest_and_ui_concurrently(s3, training_run, tmp_path, monkeypatch):
    """Defined first: it runs while the training run (started by ``training_run``) goes on."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    home = tmp_path / "airflow"
    with contextlib.ExitStack() as cleanup:
        tracking = cleanup.enter_context(mlflow_on_s3(tmp_path / "mlflow", s3, "live"))
        client = mlflow_client(tracking, monkeypatch)
        # Two runs, the scheduler and the UI write to the metadata DB at once: Postgres,
        # as in production (on SQLite the UI's trigger once got a "Database error" in CI).
        database = cleanup.enter_context(postgres_server())
        # The runs share 2 cores: one thread per component process (no OpenMP
        # oversubscription), and no periodic re-parsing of unchanged DAG files.
        extra = tracking | {
            "OMP_NUM_THREADS": "1",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "600",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": database,
        }
        stack = cleanup.enter_context(AirflowStack(home, home / "runs", extra, parallelism=2))
        stack.wait_dag("par_training")
        rest_run = stack.trigger("par_training", {"profile": "ci-airflow"})
        try:
            ui_run = ui_trigger(stack.url, stack.user, stack.password, ARTIFACTS)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\napi-server log:\n{stack.log_tail('api-server', 6000)}") from exc
        states = stack.wait_runs("par_training", [rest_run, ui_run], timeout=1500)
        if set(states.values()) != {"success"}:
            pytest.fail(f"runs {states}; logs under {home / 'logs'}")
        ui_screenshot_run(stack.url, stack.user, stack.password, ui_run, ARTIFACTS)
        assert stack.xcom("par_training", rest_run, "prepare") == ["PushCube-v1"]  # the tasks mapped over
        monkeypatch.setenv("PAR_RUNS_ROOT", stack.env["PAR_RUNS_ROOT"])
        folders = {r: Path(run_folder(r)) for r in (rest_run, ui_run)}
        runs = {r: stack.run("par_training", r) for r in (rest_run, ui_run)}
        versions = {v.version for v in client.search_model_versions(f"name = '{MODEL}'")}

    assert folders[rest_run] != folders[ui_run]
    assert {p.parent for p in folders.values()} == {home / "runs"}
    steps = {r: yaml.safe_load((f / "params.yaml").read_text())["train"]["steps"] for r, f in folders.items()}
    assert steps == {rest_run: 3, ui_run: 4}  # the profile's value; the value typed into the form
    gates = {r: json.loads((f / "metrics" / "gate.json").read_text()) for r, f in folders.items()}
    assert {g["version"] for g in gates.values()} == versions == {"1", "2"}  # one version each
    a, b = runs[rest_run], runs[ui_run]
    assert a["start_date"] < b["end_date"] and b["start_date"] < a["end_date"]  # they overlapped
    assert (ARTIFACTS / "airflow-trigger-form.png").stat().st_size > 10_000
    assert (ARTIFACTS / "airflow-finished-run.png").stat().st_size > 10_000


# ------------------------------------------------------------------ airflow dags test


def alias_version(client: Any, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(MODEL, alias).version)
    except MlflowException:
        return None


def test_training_dag_registers_a_version_and_moves_aliases_as_the_gate_decided(trained, tracking, client):
    folder, gate = trained["folder"], trained["gate"]
    params = yaml.safe_load((folder / "params.yaml").read_text())
    profile = yaml.safe_load((ROOT / "profiles" / f"{PROFILE}.yaml").read_text())
    # the profile's values, not params.yaml's
    assert params["tasks"] == profile["tasks"] and params["collect"]["demos_per_task"] == 2
    for task in profile["tasks"]:
        assert json.loads((folder / "metrics" / "eval" / f"{task}.json").read_text())["episodes"] == 2

    version = client.get_model_version(MODEL, gate["version"])
    assert alias_version(client, "candidate") == version.version
    for task in profile["tasks"]:
        assert f"par.{task}.success_once" in version.tags and f"par.{task}.wilson_low" in version.tags
    if gate["promoted"]:
        assert alias_version(client, "champion") == version.version
    else:
        assert gate["refusal_reasons"]
        assert alias_version(client, "champion") == gate["previous_champion"]  # unmoved (None: never set)

    # The model's files are on S3, and every stage's MLflow run nests under this DAG run's run.
    assert version.source.startswith(("models:/", "s3://"))
    listing = s3_client(tracking["MLFLOW_S3_ENDPOINT_URL"]).list_objects_v2(Bucket=BUCKET, Prefix="artifacts/")
    keys = [o["Key"] for o in listing.get("Contents", [])]
    assert any(k.endswith("policy.json") for k in keys), keys[:20]
    runs = client.search_runs(
        [client.get_experiment_by_name("par").experiment_id], "tags.`par.kind` = 'pipeline'", max_results=5
    )
    assert len(runs) == 1 and runs[0].data.tags["par.pipeline_key"].startswith("par_training-manual__")


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


def nightly(trained: dict[str, Any], name: str) -> tuple[Path, float]:
    log = trained["home"] / f"nightly-{name}.log"
    seconds = dags_test("par_nightly_eval", {"profile": PROFILE}, trained["env"], log, timeout=900)
    return log, seconds


def nightly_folder(trained: dict[str, Any], log: Path) -> Path:
    run_id = re.search(r"run_id=(\S+?)[,\s]", log.read_text().split("DagRun Finished:")[-1]).group(1)
    return trained["home"] / "runs" / ("nightly-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id))


def test_nightly_eval_passes_for_an_honest_champion(trained, client):
    version = client.get_model_version(MODEL, trained["gate"]["version"])
    plant_champion(client, version)
    log, _ = nightly(trained, "honest")
    result = json.loads((nightly_folder(trained, log) / "regression.json").read_text())
    assert result["version"] == version.version and result["regressions"] == []
    fresh = result["fresh"]["PushCube-v1"]
    assert fresh["episodes"] == 2  # the seeds the training run evaluated at promotion
    assert fresh["success_once"] == float(version.tags["par.PushCube-v1.success_once"])
    tags = client.get_model_version(MODEL, version.version).tags
    assert tags["par.nightly.status"] == "ok" and "par.nightly.checked_at" in tags


def test_nightly_eval_fails_on_a_planted_regression_naming_task_and_rates(trained, client):
    version = client.get_model_version(MODEL, trained["gate"]["version"])
    achieved = float(version.tags["par.PushCube-v1.success_once"])
    if achieved > 0.9:
        pytest.skip("the trained model succeeded too often to plant a higher recorded rate")
    planted = plant_champion(client, version, {"PushCube-v1": 1.0})
    with pytest.raises(DagRunFailedError) as failure:
        nightly(trained, "planted")
    text = failure.value.log.read_text()
    message = (
        "PushCube-v1: success_once fell from 1.000 (recorded at promotion, 95% interval lower bound 0.950) "
        f"to {achieved:.3f} over 2 episodes"
    )
    assert message in text
    assert "check_regression" in text and "state=failed" in text
    assert client.get_model_version(MODEL, planted).tags["par.nightly.status"] == "regressed"
