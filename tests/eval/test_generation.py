"""Sample generations: prompt and reference split at the first completion; greedy output from the model."""

from __future__ import annotations

from mtft.data.config import TaskSpec
from mtft.data.tasks import Sample, TaskData
from mtft.data.tokenize import IGNORE
from mtft.eval.generation import first_turn, metric_means, scored_generations
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model


def test_first_turn_splits_at_the_first_completion():
    sample = Sample([1, 2, 3, 4, 5, 6, 7], [IGNORE, IGNORE, 3, 4, IGNORE, 6, 7], 0)
    assert first_turn(sample) == ([1, 2], [3, 4])
    assert first_turn(Sample([1, 2], [IGNORE, IGNORE], 0)) is None  # truncated away: nothing to compare with


def test_greedy_generations_are_deterministic_and_bounded():
    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(TinyModelConfig(), tokenizer)
    prompt, answer = tokenizer.encode("12+3="), tokenizer.encode("15")
    sample = Sample(prompt + answer, [IGNORE] * len(prompt) + answer, 0)
    tasks = [TaskData("add", [], [sample, Sample([1], [IGNORE], 0)])]
    specs = [TaskSpec(name="add", path="add.jsonl", metrics=["exact_match", "chrf"])]

    def generate():
        return scored_generations(model, tasks, specs, tokenizer, per_task=2, batch_size=4, max_new_tokens=5)

    rows = generate()
    assert len(rows) == 1 and [rows[0][k] for k in ("task", "prompt", "reference")] == ["add", "12+3=", "15"]
    assert len(rows[0]["output"]) <= 5  # bytes: at most one character each
    assert set(rows[0]) == {"task", "prompt", "reference", "output", "exact_match", "chrf"}
    assert rows == generate()
    assert metric_means(rows, "add") == {"exact_match": rows[0]["exact_match"], "chrf": rows[0]["chrf"]}
    assert metric_means(rows, "other") == {}
    assert model.training  # left as it was found
