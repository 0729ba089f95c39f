"""logger=tensorboard: the same keys as metrics.jsonl in event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import pytest

from mtft.training.loop import train
from tests.helpers import compose_config, small_data_overrides

pytest.importorskip("tensorboard")  # an optional extra; the dev install has it, so CI runs this


def test_tensorboard_event_files_hold_the_metrics(dist_group, small_tasks, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = [*small_data_overrides(small_tasks, generations=1), "logger=tensorboard", "adapter=smora"]
    train(
        compose_config([*overrides, "trainer.max_steps=4", "trainer.eval_steps=2", f"trainer.output_dir={tmp_path}"])
    )
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    for key in ("loss", "lr", "task/add/loss", "task/sentiment/weight", "task/add/val_loss", "router/mean_entropy"):
        assert key in tags["scalars"], key
    assert [e.step for e in events.Scalars("task/add/val_loss")] == [2, 4]
    loads = [t for t in tags["histograms"] if t.endswith("/load")]
    assert loads and events.Histograms(loads[0])[-1].histogram_value.num > 0
    assert {"config", "data_report", "generations"} <= {t.split("/")[0] for t in tags["tensors"]}
