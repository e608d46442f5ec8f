"""The quick demo learns, and the benchmark prints the figures docs/performance.md quotes."""

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
    ceiling = result["kv_cache_detail"]["tiny"]["one_env"]["call_ceiling"]
    assert ceiling["context_tokens"] == 97 and ceiling["prefix_tokens"] == 18, ceiling
    assert min(ceiling["full_ms"], ceiling["prefix_cached_ms"], ceiling["one_token_cached_ms"]) > 0, ceiling
    rows = result["matmul_rows"]
    assert set(rows) >= {"gflops_1_rows", "gflops_131_rows", "memory_read_gbps"} and rows["memory_read_gbps"] > 0, rows
    assert '"kv_cache_speedup"' in capsys.readouterr().out
