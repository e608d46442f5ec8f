"""dvc.yaml, the one declaration of the pipeline's stages, checked against the code:
every project module a stage's command imports is among the stage's deps (so a code
change makes `dvc repro` rerun the stage), and the command lines Airflow runs are
exactly those DVC runs for the same params."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.formats.params import materialize
from components.orchestration.stages import load_stages

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "par")


def module_file(name: str) -> Path | None:
    """The file of a project module (``components.formats.files``), or None if not ours."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path) -> set[str]:
    """Every module an ``import`` anywhere in the file names (functions' own imports
    too), with ``from a import b`` also as ``a.b`` in case ``b`` is a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def has_code(path: Path) -> bool:
    """False for a file that holds nothing but a docstring (an empty package marker)."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def project_imports(module: str) -> set[Path]:
    """The project files ``module`` imports, directly or through other project modules,
    with the packages that hold them (each package's __init__ runs on import)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for k in range(1, len(parts) + 1):
            path = module_file(".".join(parts[:k]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(_imported_names(path))
    return {p for p in seen if has_code(p)}


def covered(path: Path, deps: tuple[str, ...]) -> bool:
    rel = path.relative_to(ROOT)
    return any(rel == Path(dep) or Path(dep) in rel.parents for dep in deps)


STAGES = load_stages()
# Code a stage reads as a file rather than importing it: the gate logs this file as the
# MLflow model's code (models-from-code), so it is part of what the stage writes.
READ_AS_FILES = {"gate": {"components/integrations/policy_model.py"}}
# Data the user brings rather than a stage's output (made, empty, by infra/local/setup.sh).
USER_INPUTS = {"data/user_videos"}


def _within(dep: str, output: str) -> bool:
    """``dep`` is ``output`` (a ``${item}`` there stands for any task), lies inside it, or
    is a folder of such outputs (``data/demos`` holds ``data/demos/${item}``)."""
    pattern = re.escape(output).replace(re.escape("${item}"), "[^/]+")
    return bool(re.fullmatch(f"{pattern}(/.*)?", dep)) or output.startswith(dep.rstrip("/") + "/")


@pytest.mark.parametrize("name", list(STAGES))
def test_every_module_a_stage_imports_is_a_dependency(name):
    stage = STAGES[name]
    needed = project_imports(stage.module) | {ROOT / f for f in READ_AS_FILES.get(name, set())}
    missing = sorted(str(p.relative_to(ROOT)) for p in needed if not covered(p, stage.deps))
    assert not missing, f"dvc.yaml stage {name!r} imports these project files but does not list them in deps: {missing}"


@pytest.mark.parametrize("name", list(STAGES))
def test_every_dependency_exists_and_is_used(name):
    """No stale deps: a code dep is imported by the stage; a data dep is another stage's output."""
    stage = STAGES[name]
    imported = project_imports(stage.module)
    produced = {p for other in STAGES.values() for field in ("outs", "metrics") for p in other.paths(field)}
    for dep in stage.deps:
        if dep.split("/")[0] in PACKAGES:
            assert (ROOT / dep).exists(), f"{name}: dep {dep} does not exist"
            used = dep in READ_AS_FILES.get(name, set()) or any(
                p == ROOT / dep or ROOT / dep in p.parents for p in imported
            )
            assert used, f"{name}: {dep} is not imported"
        else:
            assert dep in USER_INPUTS or any(_within(dep, p) for p in produced), f"{name}: {dep} is no stage's output"


def test_plots_and_metrics_live_where_dvc_yaml_says():
    """metrics/ and plots/ hold only what dvc.yaml declares (probes live in experiments/)."""
    declared = {p for stage in STAGES.values() for field in ("metrics", "plots", "outs") for p in stage.paths(field)}
    declared = {p for p in declared if p.split("/")[0] in ("metrics", "plots")}
    tasks = yaml.safe_load((ROOT / "params.yaml").read_text())["tasks"]
    allowed = {p.replace("${item}", t) for p in declared for t in tasks}
    for root in ("metrics", "plots"):
        for path in (ROOT / root).rglob("*"):
            if path.is_file():
                rel = str(path.relative_to(ROOT))
                assert any(rel == a or rel.startswith(a + "/") for a in allowed), f"{rel} is not a dvc.yaml output"


AIRFLOW_PROBE = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
tasks = json.loads(sys.argv[2])
out = {}
for task in bag.dags["par_training"].tasks:
    if type(task).__name__ == "MappedOperator":
        arg = task.expand_input.value["bash_command"]
        commands = []
        for item in tasks:
            for f in arg.callables:
                item = f(item)
            commands.append(item)
        out[task.task_id] = {"commands": commands, "cwd": task.partial_kwargs["cwd"]}
    elif hasattr(task, "bash_command"):
        out[task.task_id] = {"commands": [task.bash_command], "cwd": task.cwd}
print(json.dumps(out))
"""


def dvc_commands(tmp_path: Path, params: dict) -> dict[str, str]:
    """Every stage's command as DVC itself renders dvc.yaml for ``params`` (``collect@PushCube-v1``: ...)."""
    from dvc.repo import Repo

    repo = tmp_path / "dvc"
    repo.mkdir()
    (repo / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(materialize(params)))
    Repo.init(str(repo), no_scm=True)
    with Repo(str(repo)) as dvc:
        return {stage.name: stage.cmd for stage in dvc.index.stages}


def test_airflow_runs_the_command_lines_dvc_runs(tmp_path):
    params = yaml.safe_load((ROOT / "profiles" / "smoke.yaml").read_text())
    tasks = params["tasks"]
    assert len(tasks) == 3
    expected = dvc_commands(tmp_path, params)
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env["PAR_RUNNER"] = "local"
    probe = [sys.executable, "-c", AIRFLOW_PROBE, str(ROOT / "dags"), json.dumps(tasks)]
    result = subprocess.run(probe, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    airflow = json.loads(result.stdout.strip().splitlines()[-1])
    ran = {}
    for name, stage in STAGES.items():
        commands = airflow[name]["commands"]
        assert airflow[name]["cwd"] == "{{ run_folder(run_id) }}", name  # run in the run's own folder
        ran |= (
            dict(zip([f"{name}@{t}" for t in tasks], commands, strict=True)) if stage.per_task else {name: commands[0]}
        )
    assert ran == expected
