"""infra/docker-compose.yaml validates with docker-compose (no engine needed) and has the
shape the docker runner relies on: health checks, init steps, a same-path runs folder,
the CeleryExecutor with its Redis broker and two workers, and no secret of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.infra.conftest import ROOT

COMPOSE = ROOT / "infra" / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / "infra" / ".env.example"
ONE_OFF = {"airflow-init", "minio-init", "mlflow-init", "secrets-check"}
CHECK_SECRETS = ROOT / "infra" / "check-secrets.sh"


def compose_config(*env_file: Path) -> subprocess.CompletedProcess:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (infra/local/test-tools.sh installs it)")
    args = ["docker-compose", "-f", str(COMPOSE)]
    for path in env_file:
        args += ["--env-file", str(path)]
    # Only PATH from the caller: a variable of the test's environment would override the file.
    return subprocess.run([*args, "config"], capture_output=True, text=True, cwd=ROOT, env={"PATH": os.environ["PATH"]})


@pytest.fixture(scope="module")
def config() -> dict:
    result = compose_config(ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_every_long_running_service_has_a_health_check(config):
    services = config["services"]
    assert {"postgres", "minio", "mlflow", "airflow-api", "airflow-scheduler", "airflow-triggerer"} <= set(services)
    for name, service in services.items():
        if name not in ONE_OFF:
            assert "healthcheck" in service, name
            assert service.get("restart") == "unless-stopped", name


def test_airflow_login_comes_from_a_passwords_file_written_by_init(config):
    services = config["services"]
    init = services["airflow-init"]
    script = init["command"][0]
    assert "passwords.json" in script and "airflow db migrate" in script
    assert init["environment"]["AIRFLOW_ADMIN_PASSWORD"] == "change-me-airflow"
    for name in ("airflow-api", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        service = services[name]
        env = service["environment"]
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == "/opt/airflow/passwords.json"
        assert "AIRFLOW_ADMIN_PASSWORD" not in env  # only the init step sees the password
        assert "airflow-home:/opt/airflow:rw" in service["volumes"]  # writable, shared with init
        assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_runs_root_is_a_host_folder_at_the_same_path(config):
    for name, service in config["services"].items():
        if not name.startswith("airflow-"):
            continue
        runs = service["environment"]["PAR_RUNS_ROOT"]
        assert f"{runs}:{runs}:rw" in service["volumes"], name
        assert service["environment"]["PAR_RUNNER"] == "docker"
    assert "par-runs" not in config.get("volumes", {})


def test_minio_bucket_is_created_before_mlflow_starts(config):
    services = config["services"]
    assert "mc mb --ignore-existing" in services["minio-init"]["command"][0]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_secrets_are_required_not_defaulted():
    """Without an env file the config fails, naming a missing secret: the compose file holds none."""
    result = compose_config()
    assert result.returncode != 0
    assert "set in infra/.env" in result.stderr


def test_the_env_file_is_not_tracked():
    result = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=ROOT)
    assert result.returncode == 0
    for line in ENV_EXAMPLE.read_text().splitlines():
        if "PASSWORD" in line or "SECRET" in line:
            assert "change-me" in line, line


def _needs(services: dict, name: str, seen: set | None = None) -> set[str]:
    """Every service ``name`` waits for, directly or through others."""
    seen = set() if seen is None else seen
    for dependency in services[name].get("depends_on", {}):
        if dependency not in seen:
            seen.add(dependency)
            _needs(services, dependency, seen)
    return seen


def test_nothing_starts_before_the_secrets_are_checked(config):
    services = config["services"]
    for name in services:
        if name != "secrets-check":
            assert "secrets-check" in _needs(services, name), name
    first = services["postgres"]["depends_on"]["secrets-check"]["condition"]
    assert first == "service_completed_successfully"


def _check_secrets(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(CHECK_SECRETS)], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}
    )


def _example_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if "=" in line and line[0] != "#")
    return dict(pairs)


def test_the_secrets_check_refuses_every_example_value_by_name():
    result = _check_secrets(_example_env())
    assert result.returncode == 1
    for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MLFLOW_S3_SECRET_KEY", "MLFLOW_ADMIN_PASSWORD",
                 "MLFLOW_FLASK_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET",
                 "REDIS_PASSWORD"):  # fmt: skip
        assert f"{name} still has its example value" in result.stderr, name
    assert "AIRFLOW_FERNET_KEY is empty" in result.stderr


def test_the_secrets_check_passes_real_secrets_and_names_a_short_one():
    env = {k: "a-real-secret-of-forty-characters-0123456" for k, v in _example_env().items() if "change-me" in v}
    env["AIRFLOW_FERNET_KEY"] = "x" * 44
    assert _check_secrets(env).returncode == 0, _check_secrets(env).stderr
    short = _check_secrets(env | {"AIRFLOW_JWT_SECRET": "tiny"})
    assert short.returncode == 1 and "AIRFLOW_JWT_SECRET is shorter than 32 characters" in short.stderr


def test_mlflow_asks_for_a_login_and_has_s3_keys_of_its_own(config):
    mlflow = config["services"]["mlflow"]
    assert "--app-name=basic-auth" in mlflow["command"]
    assert mlflow["environment"]["MLFLOW_AUTH_CONFIG_PATH"] == "/auth/basic_auth.ini"
    assert mlflow["environment"]["AWS_ACCESS_KEY_ID"] != config["services"]["minio"]["environment"]["MINIO_ROOT_USER"]
    assert "mc admin policy attach" in config["services"]["minio-init"]["command"][0]
    airflow = config["services"]["airflow-scheduler"]["environment"]
    assert airflow["MLFLOW_TRACKING_USERNAME"] and airflow["MLFLOW_TRACKING_PASSWORD"]


def test_only_the_socket_proxy_sees_the_engine(config):
    services = config["services"]
    for name, service in services.items():
        mounts = [v for v in service.get("volumes", []) if "docker.sock" in str(v)]
        if name == "docker-proxy":
            assert mounts and all(str(m).endswith(":ro") for m in mounts), mounts
        else:
            assert not mounts, name
    assert services["airflow-scheduler"]["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"


def workers(services: dict) -> dict[str, dict]:
    return {name: s for name, s in services.items() if s.get("command", [])[:2] == ["celery", "worker"]}


def test_airflow_runs_the_celery_executor_with_two_workers_on_their_own_queues(config):
    services = config["services"]
    found = workers(services)
    assert len(found) == 2, sorted(found)
    hostnames = set()
    for name, worker in found.items():
        command = worker["command"]
        host = command[command.index("--celery-hostname") + 1]
        assert worker["hostname"] == host == name  # what its task instances report, and its log server's name
        assert command[command.index("--queues") + 1].split(",") == ["default", name]
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "inspect ping" in worker["healthcheck"]["test"][1]
        hostnames.add(host)
    assert len(hostnames) == 2
    for name, service in services.items():
        if name.startswith("airflow-"):
            env = service["environment"]
            assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
            assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://:change-me-redis@redis:6379/0", name
            assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://"), name
            assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) >= 86400, name
    assert services["airflow-scheduler"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_the_broker_is_closed_and_durable(config):
    redis = config["services"]["redis"]
    assert "ports" not in redis  # reached on the compose network only
    assert "--requirepass" in redis["command"][0] and "--appendonly yes" in redis["command"][0]
    assert redis["environment"]["REDIS_PASSWORD"] == "change-me-redis"  # refused by secrets-check
    assert any(str(v).startswith("redis:/data") for v in redis["volumes"])
    assert redis["depends_on"]["secrets-check"]["condition"] == "service_completed_successfully"
