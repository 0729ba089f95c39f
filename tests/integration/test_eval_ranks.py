"""mtft-eval under torchrun: two ranks give the one-rank numbers and predictions, with a whole model on each rank
and with the parameters partitioned by ZeRO-3 (generation in step). Five validation samples per task in batches
of two make the ranks' shares unequal: losses over 3 and 2 samples, generations over 2 batches and 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtft.cli.eval import main as eval_main
from mtft.training.loop import train
from tests.helpers import compose_config, shard_everything, small_data_overrides, torchrun

pytestmark = pytest.mark.integration

STEPS = 12
SETTINGS = ["batch_size=2", "max_new_tokens=8"]
# The ranks' token sums are all-reduced: they differ from one rank's in the order of float sums only.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def run(small_tasks, tmp_path_factory) -> Path:
    """A tiny run on two tasks (ZeRO-0), with a DeepSpeed file under which ZeRO-3 shards every parameter."""
    tmp = tmp_path_factory.mktemp("eval_ranks")
    out = tmp / "run"
    overrides = [*small_data_overrides(small_tasks), "data.max_val_samples=5", "trainer.lr=1e-2"]
    steps = [f"trainer.max_steps={STEPS}", f"trainer.eval_steps={STEPS}", f"trainer.save_steps={STEPS}"]
    train(compose_config([*overrides, *steps, shard_everything(tmp), f"trainer.output_dir={out}"]))
    return out


@pytest.fixture(scope="module")
def one_rank(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one_rank")
    eval_main([f"checkpoint={run / f'checkpoint-{STEPS}'}", f"out={out}", *SETTINGS])
    return out


def _assert_same(got: Path, expected: Path) -> dict:
    report, reference = (json.loads((d / "eval.json").read_text()) for d in (got, expected))
    assert report["tasks"].keys() == reference["tasks"].keys() == {"add", "sentiment"}
    for name, result in reference["tasks"].items():
        assert result["val_samples"] == 5 and result["generated"] == 5
        for key, value in result.items():
            close = key in ("val_loss", "perplexity")
            assert report["tasks"][name][key] == (pytest.approx(value, rel=TOLERANCE) if close else value), key
    assert (got / "predictions.jsonl").read_text() == (expected / "predictions.jsonl").read_text()
    rows, reference_rows = (
        [json.loads(line) for line in (d / "sample_losses.jsonl").read_text().splitlines()] for d in (got, expected)
    )
    assert [(r["task"], r["index"], r["tokens"]) for r in rows] == [
        (r["task"], r["index"], r["tokens"]) for r in reference_rows
    ]
    assert len(rows) == 10  # every sample, gathered in the one-rank order
    assert [r["loss_sum"] for r in rows] == pytest.approx([r["loss_sum"] for r in reference_rows], rel=TOLERANCE)
    return report


def test_two_ranks_give_the_one_rank_numbers_and_predictions(run, one_rank, tmp_path):
    out = tmp_path / "eval"
    stdout = torchrun(
        [f"checkpoint={run / f'checkpoint-{STEPS}'}", f"out={out}", *SETTINGS], 2, tmp_path, "-m mtft.cli.eval"
    )
    report = _assert_same(out, one_rank)
    assert report["ranks"] == 2 and not report["zero3"]
    assert stdout.count("written to") == 1  # rank 0 alone prints the table


def test_zero3_partitions_a_zero3_runs_model_and_gives_the_one_rank_numbers(run, one_rank, tmp_path):
    """A run trained under ZeRO-3 is evaluated under ZeRO-3 by default (its config.yaml says so)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["deepspeed"]["stage"] = 3
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "eval"
    args = [f"checkpoint={run / f'checkpoint-{STEPS}'}", f"config={tmp_path / 'config.yaml'}", f"out={out}"]
    torchrun([*args, *SETTINGS], 2, tmp_path, "-m mtft.cli.eval")
    report = _assert_same(out, one_rank)
    assert report["ranks"] == 2 and report["zero3"]
