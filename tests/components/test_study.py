"""The study driver: its cells, the -S flags DVC applies for them, and the results it
keeps as cells land (the cells themselves are DVC experiments: docs/videos.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from components.errors import ComponentError
from components.formats.params import load_params, materialize
from components.study import command, read_plan, read_results, record, run_study, summarise
from tests.components.conftest import ROOT

PLAN = ROOT / "experiments" / "video-prior" / "plan.yaml"


def test_every_cell_of_the_video_prior_plan_gives_valid_params_through_dvc(tmp_path):
    """The flags each cell passes to `dvc exp run`, applied by DVC's own code."""
    from dvc.utils.hydra import apply_overrides

    plan = read_plan(PLAN)
    base = materialize(load_params(ROOT / plan.base).model_dump(mode="json", by_alias=True))
    cells = plan.cells()
    assert len(cells) == len(plan.arms) * len(plan.demos) * len(plan.seeds) == 81
    assert [c["demos"] for c in cells[: len(plan.arms)]] == [25] * len(plan.arms)  # the smallest count first
    mixes, held, shown = {}, {}, {}
    for cell in cells:
        argv = command(plan, cell, base)
        assert argv[:5] == ["dvc", "exp", "run", "-n", cell["cell"]]
        params = tmp_path / f"{cell['cell']}.yaml"
        params.write_text(yaml.safe_dump(base))
        apply_overrides(str(params), argv[6::2])  # the values of the -S flags
        loaded = load_params(params)
        assert loaded.collect.demos_per_task == cell["demos"] and loaded.train.seed == cell["seed"]
        mixes[cell["arm"]] = (loaded.pretrain.enabled, loaded.pretrain.mix, loaded.pretrain.steps)
        held[cell["arm"]] = loaded.train.freeze_pretrained_steps
        shown[cell["arm"]] = loaded.collect.camera.show_goal
    assert mixes["none"][0] is False
    assert mixes["other-tasks"][1] == {"demos": 0.0, "other-tasks": 1.0}
    assert mixes["other-and-target"][1] == {"demos": 0.0, "other-tasks": 1.0, "target-videos": 1.0}
    assert mixes["demos"][1] == {"demos": 1.0}
    assert mixes["other-and-target-long"][1:] == (mixes["other-and-target"][1], 4 * mixes["other-and-target"][2])
    assert mixes["other-and-target-freeze"] == mixes["other-and-target"]
    assert held == {arm: 1000 if arm == "other-and-target-freeze" else 0 for arm in plan.arms}
    assert mixes["other-and-target-goal-visible"] == mixes["other-and-target"]
    assert mixes["none-goal-visible"][0] is False
    assert shown == {arm: arm.endswith("goal-visible") for arm in plan.arms}


def _plan(tmp_path: Path) -> Path:
    data = yaml.safe_load(PLAN.read_text())
    data |= {"demos": [10, 40], "seeds": [0, 1], "results": str(tmp_path / "study" / "results.csv")}
    data["arms"] = {arm: data["arms"][arm] for arm in ("none", "other-tasks", "other-and-target", "demos")}
    data["base"] = str(ROOT / data["base"])
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _evaluation(root: Path, task: str, successes: int, episodes: int = 125, grasped: int | None = None) -> None:
    from components.ml.metrics import wilson_interval

    low, high = wilson_interval(successes, episodes)
    rate = successes / episodes
    (root / task).mkdir(parents=True, exist_ok=True)
    data = {"task": task, "episodes": episodes, "success_once": rate, "success_at_end": rate,
            "wilson_low": low, "wilson_high": high, "policy_sha256": "0" * 64,
            "reached": {"is_grasped": (successes if grasped is None else grasped) / episodes}}  # fmt: skip
    (root / task / "metrics.json").write_text(json.dumps(data))


def test_results_are_kept_as_cells_land_pooled_over_seeds_and_drawn(tmp_path, monkeypatch):
    logged = []
    monkeypatch.setattr("components.study.log_study", lambda name, files: logged.append([p.name for p in files]))
    plan = read_plan(_plan(tmp_path))
    evals = tmp_path / "eval"
    for k, (cell, successes) in enumerate(zip(plan.cells()[:8], [20, 50, 60, 30, 30, 40, 70, 30], strict=True)):
        _evaluation(evals, plan.task, successes, grasped=successes + 20)
        record(plan, cell, evals)
        assert len(read_results(plan.results)) == k + 1  # kept at once, not at the end
    summarise(plan)
    table = plan.results.with_name("results.md").read_text()
    # arm none at 10 demos: seeds 0 and 1 gave 20 and 30 of 125: 50 of 250 pooled; 90 grasped.
    assert "| none | 10 | 0.200 | [0.155, 0.254] | 0.160, 0.240 | 250 | 0.360 [0.303, 0.421] |" in table
    assert "is_grasped (pooled, 95% interval)" in table
    assert plan.results.with_name("results.png").stat().st_size > 0
    assert logged == [["results.csv", "results.md", "results.png"]]


def test_a_recorded_cell_is_not_run_again_and_a_failed_cell_is_named(tmp_path, monkeypatch):
    plan = read_plan(_plan(tmp_path))
    _evaluation(tmp_path / "eval", plan.task, 40)
    for cell in plan.cells()[:-1]:
        record(plan, cell, tmp_path / "eval")
    ran = []

    class Failed:
        returncode = 1

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("components.study.subprocess.run", lambda argv: ran.append(argv) or Failed())
    with pytest.raises(ComponentError, match=plan.cells()[-1]["cell"]):
        run_study(plan)
    assert len(ran) == 1 and ran[0][4] == plan.cells()[-1]["cell"]  # only the cell not yet recorded
    assert load_params(tmp_path / "params.yaml").tasks == [plan.task]  # the base, written for it


def test_results_written_before_the_milestone_column_keep_their_rows(tmp_path):
    """A results CSV from before the milestone column gains it, blank, when the next cell
    lands; a point with such a cell pools no milestone; a missing flag is named."""
    plan = read_plan(_plan(tmp_path))
    first, second = plan.cells()[0], plan.cells()[len(plan.arms)]  # arm none, seeds 0 and 1
    plan.results.parent.mkdir(parents=True)
    old = first | {"success_once": 0.2, "wilson_low": 0.138, "wilson_high": 0.28, "successes": 25, "episodes": 125,
                   "date": "2026-12-01", "commit": "abc"}  # fmt: skip
    plan.results.write_text(",".join(old) + "\n" + ",".join(str(v) for v in old.values()) + "\n")
    _evaluation(tmp_path / "eval", plan.task, 30, grasped=60)
    record(plan, second, tmp_path / "eval")
    rows = read_results(plan.results)
    assert [r["cell"] for r in rows] == [first["cell"], second["cell"]]
    assert rows[0]["milestone"] == "" and float(rows[1]["milestone"]) == 0.48 and rows[0]["successes"] == "25"
    summarise(plan)
    assert (
        "| none | 10 | 0.220 | [0.173, 0.275] | 0.200, 0.240 | 250 |  |"
        in plan.results.with_name("results.md").read_text()
    )
    (tmp_path / "eval" / plan.task / "metrics.json").write_text(
        json.dumps(json.loads((tmp_path / "eval" / plan.task / "metrics.json").read_text()) | {"reached": {}})
    )
    with pytest.raises(ComponentError, match=r"metrics\.json has no progress flag 'is_grasped'"):
        record(plan, plan.cells()[1], tmp_path / "eval")
    assert len(read_results(plan.results)) == 2  # nothing half-written


def test_a_bad_plan_is_named(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"name": "Bad Name", "task": "PickCube-v1"}))
    with pytest.raises(ComponentError, match=r"plan\.yaml is invalid: name"):
        read_plan(path)
