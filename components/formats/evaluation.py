"""An evaluation's result (``data/eval/<task>/metrics.json``), checked where it is read.

The gate, ``promote`` and the nightly regression decide on these numbers, so a file
that is incomplete, holds NaN or a number out of range, a string where a number
belongs, another task's result or another policy's is refused here with one line
naming the file, the task and the problem: comparisons with NaN are false, and a
check that silently compares against NaN passes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import ComponentError
from components.formats.files import read_json, validation_problems

Rate = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False, strict=True)]
# What an evaluation must say, and what the registry records of it as version tags.
RECORDED = ("success_once", "success_at_end", "wilson_low", "wilson_high", "episodes")


class Evaluation(BaseModel):
    """The fields every decision reads; the file may hold more (``reached``, seconds, ...)."""

    model_config = ConfigDict(extra="allow", frozen=True, strict=True)

    task: str
    episodes: int = Field(ge=0)
    success_once: Rate
    success_at_end: Rate
    wilson_low: Rate
    wilson_high: Rate
    policy_sha256: str = Field(min_length=16)

    @model_validator(mode="after")
    def _interval_holds_the_rate(self) -> Evaluation:
        if not self.wilson_low <= self.success_once <= self.wilson_high:
            raise ValueError(
                f"success_once {self.success_once} lies outside its interval [{self.wilson_low}, {self.wilson_high}]"
            )
        return self


def parse_evaluation(data: Any, where: str) -> Evaluation:
    """``data`` (a parsed metrics.json) as an Evaluation; the error names ``where``."""
    if not isinstance(data, dict):
        raise ComponentError(f"{where} must hold a JSON object, not {type(data).__name__}")
    try:
        return Evaluation.model_validate(data)
    except ValidationError as exc:
        raise ComponentError(f"{where} is not a valid evaluation: {validation_problems(exc)}") from exc


def read_evaluation(path: str | Path, task: str) -> Evaluation:
    """The evaluation of ``task`` at ``path``, refused if it is another task's."""
    where = f"{task} evaluation {path}"
    evaluation = parse_evaluation(read_json(path, f"{task} evaluation"), where)
    if evaluation.task != task:
        raise ComponentError(f"{where} is the evaluation of {evaluation.task!r}, not of {task!r}")
    return evaluation


def finite_rate(value: Any) -> bool:
    """A number in [0, 1] (not NaN, not infinite, not a string)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1
