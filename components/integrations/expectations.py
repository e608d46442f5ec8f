"""Great Expectations, run on a table of facts (one row an episode or a clip): the
suite, its verdict per expectation with the failing rows, and the HTML data docs."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

SuiteFactory = Callable[[Any, int], Any]  # (the great_expectations module, row count) -> suite


def run_suite(
    name: str, rows: list[dict], suite_fn: SuiteFactory, out_docs: Path, index: str, fill: tuple[str, ...] = ()
) -> dict:
    """Run the suite ``suite_fn(gx, n_rows)`` on the table ``rows`` (one row an episode
    or clip, keyed by the column ``index``; columns ``fill`` are -1 where a row lacks
    them, as an unreadable file's row does); build the data docs into ``out_docs``.
    Each expectation's report lists its failing rows as ``failing_<index>s``."""
    import pandas as pd

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="great_expectations")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    frame = pd.DataFrame(rows)
    for column in fill:
        if column not in frame:
            frame[column] = -1
    with tempfile.TemporaryDirectory() as project:
        context = gx.get_context(mode="file", project_root_dir=project)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)  # one log line is enough
        source = context.data_sources.add_pandas(f"{name}_dataset")
        batch = source.add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all rows")
        suite = context.suites.add(suite_fn(gx, len(frame)))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{name} rows", data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name="validate",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": [index]},
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame.astype(object).where(frame.notna(), None)})
        site = Path(project) / "gx" / "uncommitted" / "data_docs" / "local_site"
        if site.is_dir():
            shutil.copytree(site, out_docs, dirs_exist_ok=True)
    report = []
    for run in result.run_results.values():
        for item in run.results:
            config = item.expectation_config
            failing = [u.get(index) for u in item.result.get("unexpected_index_list") or []]
            report.append(
                {
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "kwargs": {k: v for k, v in config.kwargs.items() if k not in ("column", "batch_id")},
                    "success": bool(item.success),
                    f"failing_{index}s": failing,
                    "observed": item.result.get("observed_value"),
                }
            )
    return {"success": bool(result.success), "expectations": report}
