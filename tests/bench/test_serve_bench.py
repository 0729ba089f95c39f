"""`mtft-bench serve`: the load's arithmetic checked by hand, and `--quick` end to end (two tiny trained runs, each
served and loaded one client at a time and with 2 clients): the JSON's structure, positive numbers, every answered
request in a batch the server reports for that mode, the server stopped with exit 0, and the ratios present.
Not a speed claim: on a busy CPU the numbers say nothing."""

from __future__ import annotations

import json
import math

import pytest

from mtft.adapters import baseline_adapter
from mtft.bench import COMMANDS, serve


def test_a_modes_throughput_and_latency_percentiles():
    tokens = [8, 8, 8, 8, 4]
    samples = [serve.Sample(0.1 * i, 1.0 * i, tokens=n, finish="length") for i, n in enumerate(tokens, start=1)]
    result = serve.summarise(samples, wall=4.0)
    assert result["requests_per_second"] == 5 / 4 and result["output_tokens_per_second"] == 36 / 4
    assert result["first_token_seconds"]["p50"] == pytest.approx(0.3)
    assert result["last_token_seconds"] == {"p50": 3.0, "p99": pytest.approx(4.96)}  # 4 + 0.96 · (5 - 4)
    assert result["finish_reasons"] == {"length": 5}


def test_the_metrics_a_mode_added():
    before = {"batch_sizes": {"1": 3}, "finished": {"length": 3}}
    after = {"batch_sizes": {"1": 3, "2": 4}, "finished": {"length": 11}, "note": "not a counter"}
    assert serve.counts_added(before, after) == {"batch_sizes": {"2": 4}, "finished": {"length": 8}}


@pytest.mark.integration
@pytest.mark.slow
def test_quick_serves_each_adapter_alone_and_concurrently_and_reports_its_ratios(tmp_path, capsys):
    out = tmp_path / "serve.json"
    assert COMMANDS["serve"](["--quick", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["suite"] == "serve" and report["quick"] and report["settings"]["clients"] == 2
    assert list(report["adapters"]) == [baseline_adapter(), "molora"]
    for name, result in report["adapters"].items():
        assert result["server_exit"] == 0 and result["train_seconds"] > 0
        assert {mode: m["clients"] for mode, m in result["modes"].items()} == {"one": 1, "concurrent": 2}
        for mode in result["modes"].values():
            assert mode["errors"] == 0 and mode["requests"] > 0 and mode["output_tokens"] > 0
            assert mode["requests_per_second"] > 0 and mode["output_tokens_per_second"] > 0
            first, last = mode["first_token_seconds"], mode["last_token_seconds"]
            assert 0 < first["p50"] <= first["p99"] and 0 < last["p50"] <= last["p99"] and first["p50"] <= last["p99"]
            # every answered request of this mode (the warm-up excluded) was in one of its reported batches
            assert sum(int(size) * count for size, count in mode["batch_sizes"].items()) == mode["requests"]
        assert set(result["modes"]["one"]["batch_sizes"]) == {"1"}
        assert result["greedy_agreement"] == 1.0  # fp32 on a CPU (precision auto): batching changes no answer
        ratio = report["ratios"][f"{name}/concurrent_over_one_output_tokens_per_second"]
        assert math.isfinite(ratio) and ratio > 0
    assert report["ratios"][f"molora_over_{baseline_adapter()}/concurrent_output_tokens_per_second"] > 0
    printed = capsys.readouterr().out
    assert "out tok/s" in printed and f"{baseline_adapter()}/concurrent_over_one_output_tokens_per_second" in printed
    assert "greedy answers alone = all at once" in printed
