"""trainer.early_stopping_patience and trainer.keep_best: the run stops after N evaluations without improvement,
keeps the best checkpoint beside the newest, and a resumed run stops where the unbroken one did."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from mtft.errors import ConfigError
from mtft.training.early_stopping import EarlyStopping
from mtft.training.loop import train
from tests.helpers import compose_config, small_data_overrides


def test_patience_counts_evaluations_without_an_improvement_beyond_min_delta():
    stop = EarlyStopping("val_loss", patience=2, min_delta=0.1)
    for step, loss in [(2, 3.0), (4, 2.95), (6, 2.5), (8, math.nan), (10, 2.45)]:
        stop.observe(step, {"a": loss, "b": loss}, {})
    assert (stop.best_value, stop.best_step, stop.since_best) == (2.5, 6, 2) and stop.should_stop()
    higher = EarlyStopping("a/exact_match", patience=1)
    higher.observe(2, {}, {"a": {"exact_match": 0.2}})
    higher.observe(4, {}, {"a": {"exact_match": 0.5}})
    assert higher.best_step == 4 and not higher.should_stop()


def _config(out, small_tasks, *extra):
    return compose_config(
        [
            *small_data_overrides(small_tasks),
            f"trainer.output_dir={out}",
            "trainer.micro_batch_size=4",
            "trainer.eval_steps=2",
            "trainer.max_steps=20",
            "trainer.save_steps=2",
            "trainer.early_stopping_patience=2",
            "trainer.early_stopping_min_delta=1e9",  # nothing after the first evaluation counts as an improvement
            *extra,
        ]
    )


def test_the_run_stops_early_and_keeps_the_best_checkpoint(dist_group, small_tasks, tmp_path, capsys):
    out = tmp_path / "run"
    summary = train(_config(out, small_tasks, "trainer.keep_best=true", "trainer.save_total_limit=1"))
    assert summary["steps"] == 6  # evaluations at 2 (the best), 4 and 6
    assert summary["early_stopping"] == {
        "metric": "val_loss",
        "best_value": summary["early_stopping"]["best_value"],
        "best_step": 2,
        "stopped_early": True,
        "best_checkpoint": "checkpoint-2",
    }
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-6"]
    assert "early stop at step 6: val_loss has not improved for 2 evaluations" in capsys.readouterr().out


def test_a_resumed_run_stops_where_the_unbroken_one_did(dist_group, small_tasks, tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    expected = train(_config(straight, small_tasks))
    train(_config(broken, small_tasks))
    shutil.rmtree(broken / "checkpoint-6")  # as if it had crashed after checkpoint-4 (one evaluation since the best)
    resumed = train(_config(broken, small_tasks, "trainer.resume=auto"))
    assert resumed["steps"] == expected["steps"] == 6
    assert resumed["early_stopping"] == expected["early_stopping"]
    final = "checkpoint-6/adapter/adapter_model.safetensors"
    assert (straight / final).read_bytes() == (broken / final).read_bytes()
    records = [json.loads(line) for line in (broken / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("trainer.early_stopping_metric=nosuch/exact_match", "no task 'nosuch'"),
        ("trainer.early_stopping_metric=accuracy", "val_loss or TASK/METRIC"),
        ("trainer.early_stopping_patience=-1", "must be >= 0"),
    ],
)
def test_bad_early_stopping_settings_name_their_key(small_tasks, override, words):
    with pytest.raises(ConfigError, match=words) as info:
        compose_config([*small_data_overrides(small_tasks), override])
    assert "early_stopping" in info.value.key
