"""pretrain: video pretraining of PAR on frame-only windows (no actions), resumable.

    python -m components.pretrain --params params.yaml --encoded data/encoded \\
        --out data/pretrained --checkpoints outputs/pretrain/checkpoints \\
        --metrics metrics/pretrain.json --plots plots

The same network as ``train``, with the action loss off, on every training frame of
the tasks (plus ``pretrain.extra_latents``); its weights initialise ``train``
(components.ml.fit). Skipped, with a marker file, for the BC baseline or when
``pretrain.enabled`` is false.
"""

from __future__ import annotations

from components.console import run_cli
from components.ml.fit import run_from_command_line


def main(argv: list[str] | None = None) -> None:
    run_from_command_line("pretrain", argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
