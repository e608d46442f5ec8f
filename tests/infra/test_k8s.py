"""infra/k8s: the manifests parse, the GPU pod template asks for a GPU, and the runs claim
is mounted where the DAGs write run folders."""

from __future__ import annotations

import yaml

from tests.infra.conftest import ROOT

K8S = ROOT / "infra" / "k8s"


def documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((K8S / name).read_text()))


def test_every_manifest_parses():
    for path in sorted(K8S.glob("*.yaml")):
        assert all(isinstance(d, dict) for d in yaml.safe_load_all(path.read_text())), path.name


def test_gpu_pod_template_is_one_pod_requesting_a_gpu():
    (pod,) = documents("pod-template.yaml")  # a pod_template_file holds exactly one Pod
    assert pod["kind"] == "Pod"
    (base,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
    assert base["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert base["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (volume,) = pod["spec"]["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == "par-runs"


def test_helm_values_mount_the_runs_claim_at_the_runs_root():
    (values,) = documents("airflow-values.yaml")
    (claim,) = documents("runs-pvc.yaml")
    env = {e["name"]: e["value"] for e in values["env"]}
    assert env["PAR_RUNNER"] == "kubernetes"
    (mount,) = values["volumeMounts"]
    (volume,) = values["volumes"]
    assert mount["mountPath"] == env["PAR_RUNS_ROOT"] and mount["name"] == volume["name"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"] == "par-runs"
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
