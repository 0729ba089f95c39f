"""The metrics.jsonl record: its keys, their order, and the window's exact per-task means."""

from __future__ import annotations

import math

import torch

from mtft.logging.records import LossWindow, StepNumbers, metrics_record, task_means

NAMES = ["add", "sort", "sentiment"]


def test_task_means_are_token_means_and_leave_out_tasks_without_tokens():
    means = task_means(NAMES, torch.tensor([3.0, 0.0, 2.0]), torch.tensor([2.0, 0.0, 4.0]))
    assert means == {"add": 1.5, "sentiment": 0.5}


def test_the_window_sums_tokens_over_its_steps_and_clears():
    window = LossWindow(len(NAMES))
    window.add(torch.tensor([4.0, 0.0, 1.0]), torch.tensor([2.0, 0.0, 1.0]))  # step means 2.0, -, 1.0
    window.add(torch.tensor([2.0, 3.0, 0.0]), torch.tensor([2.0, 1.0, 0.0]))  # step means 1.0, 3.0, -
    # (4 + 2) / (2 + 2) = 1.5, not the mean of step means; a task in one step only has that step's mean
    assert task_means(NAMES, window.sums, window.counts) == {"add": 1.5, "sort": 3.0, "sentiment": 1.0}
    window.clear()
    assert task_means(NAMES, window.sums, window.counts) == {}


def test_the_record_holds_each_key_once_in_the_contract_order():
    numbers = StepNumbers(
        7,
        loss=1.25,
        lr=1e-4,
        task_losses={"add": 1.5, "sentiment": 0.5},  # sort had no tokens in the window
        weights={"add": 1.2, "sort": 0.3, "sentiment": 1.5},
        val_losses={"sort": 2.5},
        throughput={"tokens_per_second": 100.0},
        grad_norm=0.75,
        skipped_steps=2,
        balancer={"df": 0.1},
        adapter={"router/entropy": 0.9},
    )
    record = metrics_record(NAMES, numbers)
    assert list(record.items()) == [
        ("step", 7),
        ("loss", 1.25),
        ("lr", 1e-4),
        ("task/add/loss", 1.5),
        ("task/add/weight", 1.2),
        ("task/sort/weight", 0.3),
        ("task/sort/val_loss", 2.5),
        ("task/sentiment/loss", 0.5),
        ("task/sentiment/weight", 1.5),
        ("tokens_per_second", 100.0),
        ("grad_norm", 0.75),
        ("train/skipped_steps", 2),
        ("balancer/df", 0.1),
        ("router/entropy", 0.9),
    ]


def test_a_record_without_a_gradient_norm_has_no_grad_norm_key():
    record = metrics_record(["add"], StepNumbers(1, math.nan, 0.0, {}, {"add": 1.0}, skipped_steps=1))
    assert "grad_norm" not in record and math.isnan(record["loss"]) and record["train/skipped_steps"] == 1
