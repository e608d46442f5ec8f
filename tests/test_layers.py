"""The house's rules, checked on the code's own imports (every import, functions' too):
arrows point one way, dags -> orchestration -> stages -> ml -> integrations ->
formats -> errors/console -> par; no stage imports another; par knows nothing of
Airflow, MLflow, DVC or the components."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_stages import ROOT, _imported_names

# Lower number = lower layer; a module may import its own layer or lower ones only.
LAYERS = {
    "par": 0,
    "components.errors": 1,
    "components.console": 1,
    "components.formats": 2,
    "components.integrations": 3,
    "components.ml": 4,
    "components.stage": 5,  # components/<name>.py: the command lines
    "components.orchestration": 6,
    "dags": 7,
}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] in ("par", "dags"):
        return parts[0]
    if parts[0] != "components" or len(parts) == 1:
        return None
    name = ".".join(parts[:2])
    return name if name in LAYERS else "components.stage"


def modules() -> dict[str, Path]:
    found = {}
    for package in ("par", "components", "dags"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def project_imports_of(path: Path) -> set[str]:
    return {name for name in _imported_names(path) if name in MODULES and name != "components"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_only(module):
    here = layer_of(module)
    upward = [
        name for name in project_imports_of(MODULES[module]) if LAYERS[layer_of(name)] > LAYERS[here]
    ]  # fmt: skip
    assert not upward, f"{module} (layer {here}) imports higher layers: {upward}"


def test_no_stage_imports_another_stage():
    stages = {m for m in MODULES if layer_of(m) == "components.stage" and m.count(".") == 1}
    for module in stages:
        others = (project_imports_of(MODULES[module]) & stages) - {module}
        assert not others, f"{module} imports the stages {sorted(others)}"


def test_par_knows_nothing_of_the_pipeline_around_it():
    for module, path in MODULES.items():
        if layer_of(module) == "par":
            outside = {n.split(".")[0] for n in _imported_names(path)} & {"airflow", "mlflow", "dvc", "components"}
            assert not outside, f"{module} imports {sorted(outside)}"


def test_no_import_circles():
    graph = {m: project_imports_of(p) for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join([*trail[trail.index(nxt) :], nxt])}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_function_is_longer_than_a_reader_can_hold():
    """About 60 lines at most in components/ and par/."""
    import ast

    long = []
    for module, path in MODULES.items():
        if layer_of(module) in (None, "dags"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long.append(f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, long
