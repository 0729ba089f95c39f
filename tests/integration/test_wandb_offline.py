"""logger=wandb writes a W&B run (offline here) carrying the same keys as metrics.jsonl."""

from __future__ import annotations

import pytest

from mtft.training.loop import train
from tests.helpers import compose_config, small_data_overrides

pytestmark = pytest.mark.integration


def test_wandb_offline_run_holds_the_metrics(dist_group, small_tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose_config(
        ["logger=wandb", *small_data_overrides(small_tasks), "trainer.max_steps=3", f"trainer.output_dir={tmp_path}"]
    )
    train(cfg)
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    # wandb 0.31 ships no Python reader for its transaction log; the history keys and config are stored as
    # plain strings in it, which is enough to see that each metric and the config reached the run.
    data = log.read_bytes()
    for key in ("task/add/loss", "task/sentiment/weight", "task/add/val_loss", "tokens_per_second"):
        assert key.encode() in data, key
    assert b"micro_batch_size" in data and b"max_steps" in data
