"""train: PAR (or the BC baseline) on physical tokens, tracked in MLflow, resumable.

    python -m components.train --params params.yaml --encoded data/encoded \\
        --pretrained data/pretrained --out data/policy --checkpoints outputs/train/checkpoints \\
        --metrics metrics/train.json --plots plots

Initialised from the video-pretrained model (``pretrain``'s output) unless the ablation
is ``no_video_pretrain``; writes a policy bundle (components.formats.policy). Rerun
after a kill and it resumes from its last checkpoint, in the same MLflow run, to the
same weights (components.ml.fit).
"""

from __future__ import annotations

from components.console import run_cli
from components.ml.fit import run_from_command_line


def main(argv: list[str] | None = None) -> None:
    run_from_command_line("train", argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
