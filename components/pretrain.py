"""pretrain: video pretraining of PAR on frame-only windows (see components.train).

    python -m components.pretrain --params params.yaml --encoded data/encoded \\
        --out data/pretrained --checkpoints outputs/pretrain/checkpoints \\
        --metrics metrics/pretrain.json --plots plots/pretrain
"""

from __future__ import annotations

from components.common import run_cli
from components.train import main as train_main


def main(argv: list[str] | None = None) -> None:
    train_main(argv, mode="pretrain")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
