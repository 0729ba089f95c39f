"""The recipe's lifecycle: building it does nothing; `cleanup` runs whatever ends the run. An exception injected
mid-run (under ZeRO-3, which patches torch) leaves the offline W&B run finished (marked failed), the signal
handlers and torch as they were, and an output directory that holds the run-output contract up to the last
checkpoint, from which the run resumes and finishes."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from mtft.training import step as steps
from mtft.training.checkpoint.files import COMPLETE_MARKER
from mtft.training.loop import TrainingRecipe, train
from mtft.training.preemption import SIGNALS
from tests.helpers import compose_config, small_data_overrides, wandb_records

pytestmark = pytest.mark.integration


class Injected(RuntimeError):
    pass


def _config(out: Path, small_tasks, *extra: str):
    return compose_config(
        [
            *small_data_overrides(small_tasks),
            "logger=wandb",
            "trainer.max_steps=4",
            "trainer.save_steps=2",
            "trainer.eval_steps=2",
            "trainer.logging_steps=1",
            f"trainer.output_dir={out}",
            *extra,
        ]
    )


def test_building_the_recipe_does_nothing(small_tasks, tmp_path):
    recipe = TrainingRecipe(_config(tmp_path / "run", small_tasks))
    assert not (tmp_path / "run").exists()
    recipe.cleanup()  # nothing was opened: nothing to close, and no error


def test_an_exception_mid_run_is_cleaned_up(dist_group, small_tasks, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    original_step = steps.optimizer_step

    def failing_at_step_3(engine, *args, **kwargs):
        if engine.global_steps == 2:
            raise Injected("a fault in step 3")
        return original_step(engine, *args, **kwargs)

    monkeypatch.setattr(steps, "optimizer_step", failing_at_step_3)
    before = {sig: signal.getsignal(sig) for sig in SIGNALS}
    linear = torch.nn.functional.linear
    out = tmp_path / "run"
    with pytest.raises(Injected):
        train(_config(out, small_tasks, "deepspeed=zero3"))

    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before  # the preemption handlers are gone
    assert torch.nn.functional.linear is linear  # DeepSpeed's ZeRO-3 wrapper is not left in torch
    import wandb

    assert wandb.run is None  # finished, in this process
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    exits = [r for r in wandb_records(run_dir) if r["type"] == "exit"]
    assert exits and exits[-1]["exit"]["exit_code"] == 1  # and on record as failed

    # the run-output contract, up to the last checkpoint: config, data report, a record per step, checkpoint-2
    assert {"config.yaml", "data_report.json", "metrics.jsonl"} <= {p.name for p in out.iterdir()}
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all({"step", "loss", "lr", "tokens_per_second"} <= r.keys() for r in records)
    assert (out / "checkpoint-2" / COMPLETE_MARKER).is_file() and not (out / "summary.json").exists()

    monkeypatch.setattr(steps, "optimizer_step", original_step)
    summary = train(_config(out, small_tasks, "deepspeed=zero3", "trainer.resume=auto"))
    assert summary["steps"] == 4 and (out / "summary.json").is_file()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert {sig: signal.getsignal(sig) for sig in SIGNALS} == before
