"""The quick demo learns, and the benchmark prints the figures the README quotes."""

from __future__ import annotations

import pytest

from par import bench, demo


@pytest.mark.slow
def test_demo_loss_falls(capsys):
    result = demo.main(["--steps", "40", "--batch-size", "8", "--episodes", "12"])
    assert result["loss_ratio"] > 3, result
    assert '"loss_ratio"' in capsys.readouterr().out


@pytest.mark.slow
def test_bench_quick_prints_every_figure(capsys):
    result = bench.main(["--quick"])
    assert result["kv_cache_speedup"]["tiny"] > 0
    assert 0 < result["mfu"] < 1.5  # a ratio of two measurements of this machine
    assert result["train_tokens_per_s"] > 0 and result["peak_rss_mb"] > 100
    assert '"kv_cache_speedup"' in capsys.readouterr().out
