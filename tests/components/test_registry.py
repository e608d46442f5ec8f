"""gate, promote and model URIs against a real `mlflow server` on loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from components.integrations.registry import Registry, resolve_policy
from tests.cli import Completed, run_module
from tests.components.conftest import write_params
from tests.harness.browser import ARTIFACTS, screenshot
from tests.harness.servers import mlflow_server


@pytest.fixture(scope="module")
def tracking(tmp_path_factory, servers):
    with pytest.MonkeyPatch.context() as mp, mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as uri:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


def _eval_root(tmp: Path, rates: dict[str, float], episodes: int = 125) -> Path:
    from components.evaluate import summarize

    root = tmp / "eval"
    for task, rate in rates.items():
        successes = round(rate * episodes)
        rows = [
            {"seed": i, "success_once": i < successes, "success_at_end": i < successes, "steps": 100, "failure": ""}
            for i in range(episodes)
        ]
        (root / task).mkdir(parents=True, exist_ok=True)
        (root / task / "metrics.json").write_text(json.dumps(summarize(rows, task)))
    return root


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
    good = _eval_root(tmp_path / "v1", {"PushCube-v1": 0.98, "PickCube-v1": 0.6, "StackCube-v1": 0.4})
    result = _gate(params, policy_dir, good, tmp_path / "g1.json")
    assert result.returncode == 0, result.stderr
    decision = json.loads((tmp_path / "g1.json").read_text())
    assert decision["promoted"] and decision["version"] == "1"
    registry = Registry("par-test")
    assert registry.alias_version("champion") == "1" == registry.alias_version("candidate")
    assert float(registry.tags("1")["par.PushCube-v1.success_once"]) > 0.95

    # 2. A regression on PickCube stays candidate; the refusal names task and numbers.
    worse = _eval_root(tmp_path / "v2", {"PushCube-v1": 0.98, "PickCube-v1": 0.4, "StackCube-v1": 0.4})
    result = _gate(params, policy_dir, worse, tmp_path / "g2.json")
    assert result.returncode == 0  # fail_on_refusal is false
    decision = json.loads((tmp_path / "g2.json").read_text())
    assert not decision["promoted"] and decision["champion"] == "1"
    assert any("PickCube-v1: success_once 0.400 vs champion 0.600" in r for r in decision["refusal_reasons"])
    assert registry.alias_version("candidate") == "2" and registry.alias_version("champion") == "1"

    # 3. ... and exits 1 when params ask for it.
    strict = write_params(tmp_path / "strict.yaml", gate={**gate, "fail_on_refusal": True})
    # (a real process once: the exit code of `python -m` itself)
    v3 = _eval_root(tmp_path / "v3", {t: 0.5 for t in tasks})
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

    # 6. The champion resolves from the registry as a policy.
    policy = resolve_policy("models:/par-test@champion")
    assert policy.tasks == tasks

    # 7. What a person sees in the MLflow UI: the versions with their aliases.
    shot = screenshot(f"{tracking}/#/models/par-test", ARTIFACTS / "mlflow-model-page.png", wait_text="champion")
    assert shot.stat().st_size > 10_000


def test_nightly_regression_check(tracking, policy_dir, tmp_path):
    """A champion that now does worse than its recorded interval fails loudly; an honest one passes."""
    import http.server
    import threading

    gate = {"model_name": "par-nightly", "min_wilson_low": {}, "default_min_wilson_low": 0.0}
    params = write_params(tmp_path / "params.yaml", tasks=["PushCube-v1"], gate=gate)
    recorded = _eval_root(tmp_path / "promoted", {"PushCube-v1": 0.96})
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
        fresh = _eval_root(tmp_path / "tonight", {"PushCube-v1": 0.72})
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

    honest = _eval_root(tmp_path / "honest", {"PushCube-v1": 0.95})
    ok = run_module(
        "components.regression",
        *("--params", str(params), "--eval-root", str(honest), "--out", str(tmp_path / "r2.json")),
    )
    assert ok.returncode == 0, ok.stderr
    assert registry.tags("1")["par.nightly.status"] == "ok"
