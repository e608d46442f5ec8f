"""The team host's MLflow asks for a login (its basic-auth app, as infra/docker-compose.yaml
runs it): for real, on loopback. The components log in through MLFLOW_TRACKING_USERNAME
and MLFLOW_TRACKING_PASSWORD, and a refused login is an error, never "no champion"."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from components.integrations.registry import Registry
from tests.harness.servers import mlflow_server

USER, PASSWORD = "par-admin", "a-long-test-password-1234"


@pytest.fixture(scope="module")
def locked_mlflow(tmp_path_factory, servers):
    root = tmp_path_factory.mktemp("mlflow-auth")
    ini = root / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = {USER}\n"
        f"admin_password = {PASSWORD}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-test-secret-key-of-32-chars-00"}
    with mlflow_server(root, env=env, extra=["--app-name", "basic-auth"], timeout=120) as uri:
        yield uri


def test_a_request_without_a_login_is_refused(locked_mlflow):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{locked_mlflow}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert refused.value.code == 401


def test_the_components_log_in_from_the_environment(locked_mlflow, monkeypatch):
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_URI", locked_mlflow)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert Registry("par-policy").alias_version("champion") is None  # logged in: there is none yet
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(MlflowException):  # refused: an error, not "no champion"
        Registry("par-policy").alias_version("champion")
