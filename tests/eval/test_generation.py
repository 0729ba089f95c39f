"""Sample generations: prompt and reference split at the first completion; greedy output from the model."""

from __future__ import annotations

import pytest
import torch

from mtft.data.config import TaskSpec
from mtft.data.tasks import Sample, TaskData
from mtft.data.tokenize import IGNORE
from mtft.eval.generation import Decoding, Ranks, first_turn, metric_means, scored_generations
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
        return scored_generations(model, tokenizer, tasks, specs, Decoding(max_new_tokens=5, batch_size=4, per_task=2))

    rows = generate()
    assert len(rows) == 1 and [rows[0][k] for k in ("task", "prompt", "reference")] == ["add", "12+3=", "15"]
    assert len(rows[0]["output"]) <= 5  # bytes: at most one character each
    assert set(rows[0]) == {"task", "prompt", "reference", "output", "exact_match", "chrf"}
    assert rows == generate()
    assert metric_means(rows, "add") == {"exact_match": rows[0]["exact_match"], "chrf": rows[0]["chrf"]}
    assert metric_means(rows, "other") == {}
    assert model.training  # left as it was found


def test_each_rank_generates_its_own_batches_and_together_the_one_rank_rows():
    """Rank r of W generates batches r, r + W, ...: five prompts in batches of two, rank 0 the first and third
    batch, rank 1 the second. (Without a process group nothing is gathered, so each rank's share shows.) Sampling
    is reseeded per batch, so sampled rows, too, are the one-rank rows."""
    tokenizer = build_byte_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(), tokenizer)
    prompts = ["1+2=", "33+4=", "5+66=", "7+8=", "90+1="]
    samples = [Sample(tokenizer.encode(p) + [50], [IGNORE] * len(p) + [50], 0) for p in prompts]
    tasks, specs = [TaskData("add", [], samples)], [TaskSpec(name="add", path="add.jsonl")]
    for do_sample in (False, True):

        def generate(rank: int = 0, world_size: int = 1, sample: bool = do_sample):
            decoding = Decoding(max_new_tokens=6, batch_size=2, do_sample=sample, seed=3)
            return scored_generations(model, tokenizer, tasks, specs, decoding, Ranks(rank, world_size))

        one_rank, (first, second) = generate(), [generate(rank, 2) for rank in (0, 1)]
        assert [row["prompt"] for row in first] == prompts[:2] + prompts[4:]
        assert [row["prompt"] for row in second] == prompts[2:4]
        assert first[:2] + second + first[2:] == one_rank
    reseeded = Decoding(max_new_tokens=6, batch_size=2, do_sample=True, seed=4)
    assert one_rank != scored_generations(model, tokenizer, tasks, specs, reseeded)  # it samples


def test_a_generation_that_fails_leaves_the_model_in_training_mode(monkeypatch):
    import mtft.eval.generation as generation

    tokenizer = build_byte_tokenizer()
    model = build_tiny_model(TinyModelConfig(), tokenizer)
    prompt = tokenizer.encode("1+2=")
    tasks = [TaskData("add", [], [Sample(prompt + [51], [IGNORE] * len(prompt) + [51], 0)])]
    seen = []

    def failing(model, *args):
        seen.append(model.training)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(generation, "generate_batch", failing)
    with pytest.raises(RuntimeError, match="out of memory"):
        scored_generations(
            model, tokenizer, tasks, [TaskSpec(name="add", path="add.jsonl")], Decoding(max_new_tokens=2)
        )
    assert seen == [False] and model.training  # generated in eval mode, then given back as it was found
