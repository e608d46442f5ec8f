"""gate, promote and model URIs against a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.integrations.registry import Registry, resolve_policy
from tests.cli import Completed, run_module
from tests.components.conftest import nan_action_policy, write_params
from tests.harness.browser import ARTIFACTS, screenshot
from tests.harness.servers import mlflow_server


@pytest.fixture(scope="module")
def tracking(tmp_path_factory, servers):
    with pytest.MonkeyPatch.context() as mp, mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as uri:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def _evaluation(task: str, rate: float, policy: Path, episodes: int = 125) -> dict:
    """What evaluate writes for ``task`` when ``rate`` of ``episodes`` succeed with ``policy``."""
    from components.evaluate import summarize
    from components.formats.policy import bundle_sha256

    successes = round(rate * episodes)
    rows = [
        {"seed": i, "success_once": i < successes, "success_at_end": i < successes, "steps": 100, "failure": ""}
        for i in range(episodes)
    ]
    return summarize(rows, task) | {"policy_sha256": bundle_sha256(policy)}


def _eval_root(tmp: Path, rates: dict[str, float], policy: Path, episodes: int = 125) -> Path:
    root = tmp / "eval"
    for task, rate in rates.items():
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / "metrics.json").write_text(json.dumps(_evaluation(task, rate, policy, episodes)))
    return root


def _artifact_files(root: str) -> list[str]:
    return [str(p) for p in Path(root).rglob("*") if p.is_file()]


def _gate(params: Path, policy: Path, eval_root: Path, out: Path) -> Completed:
    args = ["--params", str(params), "--policy", str(policy), "--eval-root", str(eval_root), "--out", str(out)]
    return run_module("components.gate", *args)


def _promote(params: Path, *args: str) -> Completed:
    return run_module("components.promote", "--params", str(params), *args)


def test_gate_promote_rollback_cycle(tracking, policy_dir, tmp_path):
    tasks = ["PushCube-v1", "PickCube-v1", "StackCube-v1"]
    gate = {
        "model_name": "par-test",
        "min_wilson_low": {"PushCube-v1": 0.85},
        "default_min_wilson_low": 0.0,
        "max_regression": 0.05,
        "fail_on_refusal": False,
    }
    params = write_params(tmp_path / "params.yaml", gate=gate)

    # 1. A good first candidate becomes champion.
    good = _eval_root(tmp_path / "v1", {"PushCube-v1": 0.98, "PickCube-v1": 0.6, "StackCube-v1": 0.4}, policy_dir)
    result = _gate(params, policy_dir, good, tmp_path / "g1.json")
    assert result.returncode == 0, result.stderr
    decision = json.loads((tmp_path / "g1.json").read_text())
    assert decision["promoted"] and decision["version"] == "1"
    registry = Registry("par-test")
    assert registry.alias_version("champion") == "1" == registry.alias_version("candidate")
    assert float(registry.tags("1")["par.PushCube-v1.success_once"]) > 0.95

    # 2. A regression on PickCube stays candidate; the refusal names task and numbers.
    worse = _eval_root(tmp_path / "v2", {"PushCube-v1": 0.98, "PickCube-v1": 0.4, "StackCube-v1": 0.4}, policy_dir)
    result = _gate(params, policy_dir, worse, tmp_path / "g2.json")
    assert result.returncode == 0  # fail_on_refusal is false
    decision = json.loads((tmp_path / "g2.json").read_text())
    assert not decision["promoted"] and decision["champion"] == "1"
    assert any("PickCube-v1: success_once 0.400 vs champion 0.600" in r for r in decision["refusal_reasons"])
    assert registry.alias_version("candidate") == "2" and registry.alias_version("champion") == "1"

    # 3. ... and exits 1 when params ask for it.
    strict = write_params(tmp_path / "strict.yaml", gate={**gate, "fail_on_refusal": True})
    # (a real process once: the exit code of `python -m` itself)
    v3 = _eval_root(tmp_path / "v3", {t: 0.5 for t in tasks}, policy_dir)
    args = ["--params", str(strict), "--policy", str(policy_dir), "--eval-root", str(v3), "--out", str(tmp_path / "g3")]
    result = subprocess.run([sys.executable, "-m", "components.gate", *args], capture_output=True, text=True)
    assert result.returncode == 1 and "PushCube-v1: wilson_low" in result.stderr

    # 4. A person cannot promote version 2 without an override; with one, it is recorded.
    refused = _promote(params, "--version", "2")
    assert refused.returncode == 1 and "PickCube-v1" in refused.stderr and "--force" in refused.stderr
    forced = _promote(params, "--version", "2", "--force", "--who", "alice", "--why", "demo fix")
    assert forced.returncode == 0, forced.stderr
    assert registry.alias_version("champion") == "2"
    tags = registry.tags("2")
    assert tags["par.override.by"] == "alice" and tags["par.override.why"] == "demo fix"
    assert "PickCube-v1" in tags["par.override.failed_checks"]
    assert _promote(params, "--version", "3", "--force").returncode == 2  # an override needs who and why

    # 5. Roll back to the previous champion.
    back = _promote(params, "--rollback")
    assert back.returncode == 0, back.stderr
    assert registry.alias_version("champion") == "1"

    # 6. The champion resolves from the registry as a policy, and loads as an MLflow
    # model that is code, not a pickled object.
    policy = resolve_policy("models:/par-test@champion")
    assert policy.tasks == tasks
    import mlflow
    import numpy as np
    import pandas as pd

    files = {Path(p).name for p in _artifact_files(mlflow.artifacts.download_artifacts("models:/par-test@champion"))}
    assert "policy_model.py" in files and not any(f.endswith(".pkl") for f in files), sorted(files)
    model = mlflow.pyfunc.load_model("models:/par-test@champion")
    H, W, _ = policy.info["frame_shape"]
    row = {"task": "PushCube-v1", "frame": np.zeros((H, W, 3), np.uint8).tolist(), "proprio": [0.0] * 12}
    actions = model.predict(pd.DataFrame([row]))["actions"][0]
    assert np.asarray(actions).shape == (policy.model.config.chunk_len, policy.model.config.action_dim)

    # 7. What a person sees in the MLflow UI: the versions with their aliases.
    shot = screenshot(f"{tracking}/#/models/par-test", ARTIFACTS / "mlflow-model-page.png", wait_text="champion")
    assert shot.stat().st_size > 10_000


def test_nightly_regression_check(tracking, policy_dir, tmp_path):
    """A champion that now does worse than its recorded interval fails loudly; an honest one passes."""
    import http.server
    import threading

    gate = {"model_name": "par-nightly", "min_wilson_low": {}, "default_min_wilson_low": 0.0}
    params = write_params(tmp_path / "params.yaml", tasks=["PushCube-v1"], gate=gate)
    recorded = _eval_root(tmp_path / "promoted", {"PushCube-v1": 0.96}, policy_dir)
    assert _gate(params, policy_dir, recorded, tmp_path / "g.json").returncode == 0

    received = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        fresh = _eval_root(tmp_path / "tonight", {"PushCube-v1": 0.72}, policy_dir)
        bad = run_module(
            "components.regression",
            *("--params", str(params), "--eval-root", str(fresh), "--out", str(tmp_path / "r.json")),
            *("--webhook-url", f"http://127.0.0.1:{hook.server_port}/alert"),
        )
    finally:
        hook.shutdown()
    assert bad.returncode == 1
    assert "PushCube-v1: success_once fell from 0.960" in bad.stderr and "to 0.720" in bad.stderr
    assert received and "PushCube-v1" in received[0]["text"]
    registry = Registry("par-nightly")
    assert registry.tags("1")["par.nightly.status"] == "regressed"

    honest = _eval_root(tmp_path / "honest", {"PushCube-v1": 0.95}, policy_dir)
    ok = run_module(
        "components.regression",
        *("--params", str(params), "--eval-root", str(honest), "--out", str(tmp_path / "r2.json")),
    )
    assert ok.returncode == 0, ok.stderr
    assert registry.tags("1")["par.nightly.status"] == "ok"


# ------------------------------------------------------------------ planted evidence

PLANTED_TASKS = ["PushCube-v1", "PickCube-v1", "StackCube-v1"]
RATES = {"PushCube-v1": 0.96, "PickCube-v1": 0.6, "StackCube-v1": 0.4}
NOT_REGISTERED, REFUSED = 2, 0  # exit codes: bad evidence registers nothing; weak evidence stays candidate


def _plant(field: str, value: object):
    return lambda m: m | {field: value}


def _drop(field: str):
    return lambda m: {k: v for k, v in m.items() if k != field}


# (case, task planted, how its metrics.json changes (None: the file is removed), exit code, words of the message)
PLANTED = [
    ("NaN success", "PickCube-v1", _plant("success_once", float("nan")), NOT_REGISTERED, "finite number"),
    ("NaN lower bound", "StackCube-v1", _plant("wilson_low", float("nan")), NOT_REGISTERED, "wilson_low"),
    ("infinite upper bound", "PushCube-v1", _plant("wilson_high", float("inf")), NOT_REGISTERED, "wilson_high"),
    ("rate above 1", "PickCube-v1", _plant("success_once", 1.5), NOT_REGISTERED, "success_once"),
    ("negative rate", "PickCube-v1", _plant("success_at_end", -0.1), NOT_REGISTERED, "success_at_end"),
    ("rate outside its interval", "PickCube-v1", _plant("wilson_low", 0.99), NOT_REGISTERED, "outside its interval"),
    ("string for a number", "PushCube-v1", _plant("success_once", "0.96"), NOT_REGISTERED, "success_once"),
    ("boolean for a number", "PushCube-v1", _plant("success_once", True), NOT_REGISTERED, "success_once"),
    ("float episode count", "StackCube-v1", _plant("episodes", 125.0), NOT_REGISTERED, "episodes"),
    ("negative episodes", "StackCube-v1", _plant("episodes", -1), NOT_REGISTERED, "episodes"),
    ("missing field", "PickCube-v1", _drop("wilson_low"), NOT_REGISTERED, "wilson_low"),
    ("no policy hash", "PickCube-v1", _drop("policy_sha256"), NOT_REGISTERED, "policy_sha256"),
    ("missing task", "StackCube-v1", None, NOT_REGISTERED, "does not exist"),
    ("another task's metrics", "PickCube-v1", _plant("task", "PushCube-v1"), NOT_REGISTERED, "of 'PushCube-v1'"),
    ("another policy's evaluation", "PushCube-v1", _plant("policy_sha256", "0" * 64), NOT_REGISTERED, "another policy"),
    ("a list, not an object", "PushCube-v1", lambda m: [m], NOT_REGISTERED, "JSON object"),
    ("not JSON", "PickCube-v1", lambda m: "{success_once: 0.9", NOT_REGISTERED, "not valid JSON"),
    ("no episodes", "StackCube-v1", lambda m: m | dict(episodes=0, success_once=0.0, success_at_end=0.0,
                                                           wilson_low=0.0, wilson_high=1.0), REFUSED, "0 episodes"),
    ("too few episodes", "PushCube-v1", _plant("episodes", 20), REFUSED, "fewer than gate.min_episodes 125"),
]  # fmt: skip


@pytest.fixture(scope="module")
def planted_champion(tracking, policy_dir, tmp_path_factory):
    """Model par-planted whose champion is version 1, gated on honest evidence: a
    candidate with the same evidence would be promoted, so only a planted flaw stops it."""
    tmp = tmp_path_factory.mktemp("planted")
    gate = {"model_name": "par-planted", "min_wilson_low": {}, "default_min_wilson_low": 0.0, "min_episodes": 125}
    params = write_params(tmp / "params.yaml", gate=gate)
    honest = _gate(params, policy_dir, _eval_root(tmp / "honest", RATES, policy_dir), tmp / "g.json")
    assert honest.returncode == 0 and json.loads((tmp / "g.json").read_text())["promoted"], honest.stderr
    return params


def _write_planted(root: Path, task: str, change, policy: Path) -> None:
    for name, rate in RATES.items():
        path = root / name / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        metrics = _evaluation(name, rate, policy)
        if name == task and change is None:
            continue
        metrics = change(metrics) if name == task else metrics
        path.write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))


@pytest.mark.parametrize("case, task, change, code, words", PLANTED, ids=[c[0] for c in PLANTED])
def test_planted_evidence_never_reaches_champion(planted_champion, policy_dir, tmp_path, case, task, change, code,
                                                  words):  # fmt: skip
    registry = Registry("par-planted")
    versions = len(registry.client.search_model_versions("name = 'par-planted'"))
    _write_planted(tmp_path / "eval", task, change, policy_dir)
    result = _gate(planted_champion, policy_dir, tmp_path / "eval", tmp_path / "g.json")
    assert result.returncode == code, result.stderr
    assert registry.alias_version("champion") == "1"
    message = result.stderr if code else json.dumps(json.loads((tmp_path / "g.json").read_text())["refusal_reasons"])
    assert task in message and words in message, message
    now = len(registry.client.search_model_versions("name = 'par-planted'"))
    assert now == versions + (code == REFUSED)  # bad evidence registers nothing; weak evidence a candidate


@pytest.mark.parametrize(
    "plant, words",
    [
        (lambda p: (p / "policy.json").write_text("{}"), "is not a par-policy-v2 policy"),
        (lambda p: (p / "policy.json").write_text(json.dumps({"format": "par-policy-v2"})), "tasks"),
        (lambda p: shutil.rmtree(p / "vae"), "lacks its vae/"),
        (lambda p: (p / "vae" / "config.json").unlink(), "vae/ does not load"),
        (lambda p: (p / "model" / "model.safetensors").unlink(), "no model weights"),
    ],
    ids=["empty policy.json", "policy.json without its fields", "no vae", "vae without config", "no weights"],
)
def test_a_bundle_that_cannot_load_or_act_is_not_registered(planted_champion, policy_dir, tmp_path, plant, words):
    broken = tmp_path / "policy"
    shutil.copytree(policy_dir, broken)
    plant(broken)
    _write_planted(tmp_path / "eval", "", None, broken)  # honest evaluations of that very folder
    result = _gate(planted_champion, broken, tmp_path / "eval", tmp_path / "g.json")
    assert result.returncode == 2 and words in result.stderr, result.stderr
    assert Registry("par-planted").alias_version("champion") == "1"


@pytest.mark.parametrize("score", ['{"psnr": NaN}', '{"ssim": "0.7"}', "[1, 2]", "{"])
def test_a_broken_score_file_is_named_and_registers_nothing(planted_champion, policy_dir, tmp_path, score):
    registry = Registry("par-planted")
    versions = len(registry.client.search_model_versions("name = 'par-planted'"))
    (tmp_path / "score.json").write_text(score)
    args = ["--params", str(planted_champion), "--policy", str(policy_dir), "--eval-root"]
    args += [str(_eval_root(tmp_path, RATES, policy_dir)), "--score", str(tmp_path / "score.json")]
    result = run_module("components.gate", *args, "--out", str(tmp_path / "g.json"))
    assert result.returncode == 2 and "score.json" in result.stderr, result.stderr
    assert len(registry.client.search_model_versions("name = 'par-planted'")) == versions
    assert registry.alias_version("champion") == "1"


def test_a_policy_acting_nan_is_not_registered(planted_champion, policy_dir, tmp_path):
    broken = nan_action_policy(policy_dir, tmp_path / "policy")
    _write_planted(tmp_path / "eval", "", None, broken)
    result = _gate(planted_champion, broken, tmp_path / "eval", tmp_path / "g.json")
    assert result.returncode == 2 and "first action chunk" in result.stderr, result.stderr


def test_a_failure_while_registering_leaves_the_registry_as_it_was(planted_champion, policy_dir, tmp_path, monkeypatch):
    from components import gate

    registry = Registry("par-planted")
    before = (registry.alias_version("candidate"), registry.alias_version("champion"))
    versions = len(registry.client.search_model_versions("name = 'par-planted'"))

    def fail(self, alias, version, **kwargs):
        if alias == "champion":
            raise ConnectionError("the registry went away")
        return original(self, alias, version, **kwargs)

    original = Registry.move_alias
    monkeypatch.setattr(Registry, "move_alias", fail)
    with pytest.raises(ConnectionError):
        gate.gate(planted_champion, policy_dir, _eval_root(tmp_path, RATES, policy_dir), None)
    assert (registry.alias_version("candidate"), registry.alias_version("champion")) == before
    assert len(registry.client.search_model_versions("name = 'par-planted'")) == versions


def test_the_version_carries_a_model_card(planted_champion):
    version = Registry("par-planted").client.get_model_version("par-planted", "1")
    card = version.description
    assert "| PickCube-v1 | 0.600 | [" in card and "| 125 |" in card and "promoted to champion" in card
    assert "commit" in card and "bundle sha256" in card
    assert version.tags["par.policy_sha256"]


def test_a_registry_that_cannot_be_reached_is_an_error_not_no_champion(monkeypatch):
    from mlflow.exceptions import MlflowException

    from tests.harness.processes import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(MlflowException):
        Registry("par-planted").alias_version("champion")


@pytest.mark.parametrize(
    "planted, words",
    [
        (lambda root: (root / "PushCube-v1" / "metrics.json").unlink(), "does not exist"),
        (lambda root: (root / "PushCube-v1" / "metrics.json").write_text('{"task": "PushCube-v1"}'), "success_once"),
        (
            lambda root: (root / "PushCube-v1" / "metrics.json").write_text(
                (root / "PushCube-v1" / "metrics.json")
                .read_text()
                .replace('"success_once": 0.96', '"success_once": NaN')
            ),
            "finite number",
        ),
        (
            lambda root: (root / "PushCube-v1" / "metrics.json").write_text(
                json.dumps(
                    json.loads((root / "PushCube-v1" / "metrics.json").read_text()) | {"policy_sha256": "f" * 64}
                )
            ),
            "another bundle",
        ),
    ],
    ids=["missing", "partial", "NaN", "another bundle"],
)
def test_nightly_check_fails_on_unusable_evidence(tracking, policy_dir, tmp_path, planted, words):
    gate = {"model_name": "par-nightly-evidence", "min_wilson_low": {}, "default_min_wilson_low": 0.0}
    params = write_params(tmp_path / "params.yaml", tasks=["PushCube-v1"], gate=gate)
    if Registry("par-nightly-evidence").alias_version("champion") is None:
        promoted = _eval_root(tmp_path / "promoted", {"PushCube-v1": 0.96}, policy_dir)
        assert _gate(params, policy_dir, promoted, tmp_path / "g.json").returncode == 0
    fresh = _eval_root(tmp_path / "tonight", {"PushCube-v1": 0.96}, policy_dir)
    planted(fresh)
    result = run_module(
        "components.regression", "--params", str(params), "--eval-root", str(fresh), "--out", str(tmp_path / "r.json")
    )
    assert result.returncode == 1 and "PushCube-v1" in result.stderr and words in result.stderr, result.stderr
    assert Registry("par-nightly-evidence").tags("1")["par.nightly.status"] == "regressed"
