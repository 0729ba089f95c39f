"""Resuming with other data or another seed: the saved data position belongs to the old stream, so the resume is
refused with what changed (before the model loads, where the config shows it), unless
trainer.resume_allow_changes keeps the weights, optimizer and step and restarts the data stream."""

from __future__ import annotations

import json
import shutil

import pytest

from mtft.errors import ConfigError
from mtft.training import components
from mtft.training.checkpoint.files import COMPLETE_MARKER, RUN_INPUTS, input_changes, load_rank_state
from mtft.training.loop import train
from tests.helpers import compose_config, small_data_overrides


def _config(out, tasks, *extra):
    return compose_config(
        [
            *small_data_overrides(tasks),
            f"trainer.output_dir={out}",
            "trainer.micro_batch_size=4",
            "trainer.logging_steps=1",
            "trainer.eval_steps=2",
            "trainer.save_steps=2",
            *extra,
        ]
    )


@pytest.fixture()
def run(dist_group, small_tasks, tmp_path):
    """Own copies of the task files (tests edit them), and a 2-step run with checkpoint-2."""
    tasks = {name: shutil.copy(path, tmp_path / path.name) for name, path in small_tasks.items()}
    out = tmp_path / "out"
    train(_config(out, tasks, "trainer.max_steps=2"))
    return out, tasks


def _no_model(monkeypatch):
    """Whichever name the run's setup loads the model by, calling it fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model loaded before the data config was compared")

    loaders = [name for name in ("load_model_and_tokenizer", "load_model") if hasattr(components, name)]
    assert loaders
    for name in loaders:
        monkeypatch.setattr(components, name, refuse)


def test_changed_data_path_and_seed_are_refused_with_a_diff(run, tmp_path, monkeypatch):
    out, tasks = run
    moved = dict(tasks, sentiment=shutil.copy(tasks["sentiment"], tmp_path / "sentiment_v2.jsonl"))
    _no_model(monkeypatch)
    with pytest.raises(ConfigError) as raised:
        train(_config(out, moved, "trainer.max_steps=4", "trainer.resume=auto", "trainer.seed=7"))
    message = str(raised.value)
    assert raised.value.key == "trainer.resume" and "checkpoint-2" in message
    assert f"data.tasks[1].path changed from '{tasks['sentiment']}' to '{moved['sentiment']}'" in message
    assert "trainer.seed changed from 42 to 7" in message and "trainer.resume_allow_changes=true" in message


def test_task_files_edited_in_place_are_refused(run):
    """The config is the same, the sample counts are not: caught from the saved sampler state."""
    out, tasks = run
    lines = tasks["add"].read_text().splitlines(keepends=True)
    tasks["add"].write_text("".join(lines[:40]))
    with pytest.raises(ConfigError) as raised:
        train(_config(out, tasks, "trainer.max_steps=4", "trainer.resume=auto"))
    assert raised.value.key == "trainer.resume"
    assert "training sample counts changed from [58, 58] to [36, 58]" in str(raised.value)


def test_checkpoint_without_run_inputs_still_names_the_seed_change(run):
    """Checkpoints from before run_inputs.json (and manifests): the sampler's saved seed is compared, where a bare
    ValueError came before."""
    out, tasks = run
    (out / "checkpoint-2" / RUN_INPUTS).unlink()
    (out / "checkpoint-2" / COMPLETE_MARKER).write_text("2\n")
    with pytest.raises(ConfigError, match="trainer.seed changed from 42 to 7"):
        train(_config(out, tasks, "trainer.max_steps=4", "trainer.resume=auto", "trainer.seed=7"))


def test_allow_changes_keeps_weights_and_step_and_restarts_the_stream(run, tmp_path, capsys):
    out, tasks = run
    extra = dict(tasks, more=shutil.copy(tasks["add"], tmp_path / "more.jsonl"))  # a third task
    capsys.readouterr()
    train(_config(out, extra, "trainer.max_steps=4", "trainer.resume=auto", "trainer.resume_allow_changes=true"))
    assert "data.tasks[2].name='more' is new" in capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # continued at step 3, not from scratch
    assert records[0]["lr"] < records[1]["lr"] < records[2]["lr"]  # the warmup schedule went on from the checkpoint
    assert "task/more/loss" in records[3] and "task/more/loss" not in records[1]
    sampler = load_rank_state(out / "checkpoint-4" / "rank_state_0.pt")["batches"]["sampler"]
    assert len(sampler["sizes"]) == 3  # the new stream's position: a fresh sampler over three tasks
    saved = json.loads((out / "checkpoint-4" / RUN_INPUTS).read_text())
    assert [t["name"] for t in saved["data"]["tasks"]] == ["add", "sentiment", "more"]  # the next resume's reference


def test_input_changes_lists_each_key_and_ignores_worker_counts(tmp_path):
    saved = {"data": {"tasks": [{"name": "a", "path": "a.jsonl"}], "num_proc": 4, "mixing": "natural"}}
    (tmp_path / RUN_INPUTS).write_text(json.dumps({**saved, "trainer": {"seed": 42}}))
    tasks = [{"name": "b", "path": "a.jsonl"}, {"name": "c", "path": "c.jsonl"}]
    now = {"data": {"tasks": tasks, "num_proc": 16, "packing": True}, "trainer": {"seed": 42}}
    assert input_changes(tmp_path, now) == [
        "data.tasks[0].name changed from 'a' to 'b'",
        "data.mixing ('natural') is gone",
        "data.tasks[1].name='c' is new",
        "data.tasks[1].path='c.jsonl' is new",
        "data.packing=True is new",
    ]
    assert input_changes(tmp_path, {**saved, "trainer": {"seed": 42}}) == []
