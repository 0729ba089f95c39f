"""mtft.data.sampler (mixing probabilities, the resumable task sampler) and mtft.data.batches (per-rank batches)."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from mtft.data.batches import MixedBatches, validation_batches
from mtft.data.config import DataConfig, TaskSpec
from mtft.data.sampler import TaskSampler, mixing_probabilities
from mtft.data.tasks import Sample, TaskData
from mtft.data.tokenize import IGNORE

SIZES = [100, 400, 1600]
WEIGHTS = [1.0, 3.0, 4.0]

# hand-computed for SIZES (and WEIGHTS)
EXPECTED = {
    "natural": [100 / 2100, 400 / 2100, 1600 / 2100],  # 1/21, 4/21, 16/21
    "uniform": [1 / 3, 1 / 3, 1 / 3],
    "temperature": [10 / 70, 20 / 70, 40 / 70],  # sqrt: 10, 20, 40
    "weights": [1 / 8, 3 / 8, 4 / 8],
}


def config(mixing: str, temperature: float = 2.0, weights: list[float | None] | None = None) -> DataConfig:
    weights = weights or [None] * len(SIZES)
    tasks = [TaskSpec(name=f"t{i}", path=f"t{i}.jsonl", weight=w) for i, w in enumerate(weights)]
    return DataConfig(tasks=tasks, mixing=mixing, temperature=temperature)


def probabilities(mixing: str) -> np.ndarray:
    cfg = config(mixing, weights=WEIGHTS if mixing == "weights" else None)
    return mixing_probabilities(SIZES, cfg)


# ---- mixing probabilities -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixing", list(EXPECTED))
def test_mixing_probabilities_match_hand_computation(mixing):
    p = probabilities(mixing)
    np.testing.assert_allclose(p, EXPECTED[mixing], rtol=0, atol=1e-12)
    assert p.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [
        (1.0, [1 / 21, 4 / 21, 16 / 21]),  # T=1 is natural
        (0.5, [1e4 / 273e4, 16e4 / 273e4, 256e4 / 273e4]),  # n^2
        (4.0, np.sqrt([10, 20, 40]) / np.sqrt([10, 20, 40]).sum()),  # 100^(1/4) = sqrt(10), ...
    ],
)
def test_temperature_exponent(temperature, expected):
    p = mixing_probabilities(SIZES, config("temperature", temperature=temperature))
    np.testing.assert_allclose(p, expected, rtol=1e-12)


def test_large_temperature_approaches_uniform():
    p = mixing_probabilities(SIZES, config("temperature", temperature=1000.0))
    np.testing.assert_allclose(p, [1 / 3] * 3, atol=2e-3)
    assert p[0] < p[1] < p[2]


def test_weights_ignore_sizes_and_allow_zero():
    p = mixing_probabilities([5, 5000, 50], config("weights", weights=[2.0, 0.0, 6.0]))
    np.testing.assert_allclose(p, [0.25, 0.0, 0.75], atol=1e-12)


# ---- TaskSampler --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixing", list(EXPECTED))
def test_empirical_task_proportions(mixing):
    p = probabilities(mixing)
    drawn = TaskSampler(SIZES, p, seed=123).draw(10_000)
    counts = Counter(t for t, _ in drawn)
    for task, expected in enumerate(EXPECTED[mixing]):
        assert abs(counts[task] / 10_000 - expected) < 0.02, (task, counts)


def test_zero_probability_task_is_never_drawn():
    drawn = TaskSampler([10, 10, 10], np.array([0.5, 0.0, 0.5]), seed=0).draw(2000)
    assert {t for t, _ in drawn} == {0, 2}


def test_indices_are_in_range():
    sizes = [3, 7, 50]
    drawn = TaskSampler(sizes, np.array([0.2, 0.3, 0.5]), seed=1).draw(3000)
    assert all(0 <= i < sizes[t] for t, i in drawn)


def test_without_replacement_within_each_pass():
    sizes = [7, 13, 5]
    sampler = TaskSampler(sizes, np.array([0.3, 0.5, 0.2]), seed=5)
    drawn = sampler.draw(2000)
    for task, n in enumerate(sizes):
        indices = [i for t, i in drawn if t == task]
        passes = [indices[k : k + n] for k in range(0, len(indices) - n + 1, n)]
        assert len(passes) >= 3
        for one_pass in passes:
            assert sorted(one_pass) == list(range(n))
        # each pass is reshuffled: not every pass repeats the first order
        assert any(one_pass != passes[0] for one_pass in passes[1:])
        # and the order is a shuffle, not 0..n-1
        assert passes[0] != list(range(n))


def test_deterministic_per_seed():
    p = np.array([0.2, 0.3, 0.5])
    a = TaskSampler([10, 20, 30], p, seed=9).draw(500)
    b = TaskSampler([10, 20, 30], p, seed=9).draw(500)
    c = TaskSampler([10, 20, 30], p, seed=10).draw(500)
    assert a == b
    assert a != c


def test_drawing_in_pieces_equals_drawing_at_once():
    p = np.array([0.2, 0.3, 0.5])
    whole = TaskSampler([4, 6, 9], p, seed=3).draw(300)
    sampler = TaskSampler([4, 6, 9], p, seed=3)
    pieces = [pair for count in (1, 7, 50, 2, 240) for pair in sampler.draw(count)]
    assert pieces == whole


@pytest.mark.parametrize("first", [0, 1, 3, 4, 5, 9, 10, 11, 17, 40])
def test_resume_continues_the_unbroken_sequence(first):
    # tiny tasks: resuming at any point, including right at (and after) a reshuffle boundary
    sizes, p = [3, 4], np.array([0.5, 0.5])
    unbroken = TaskSampler(sizes, p, seed=21).draw(first + 60)

    sampler = TaskSampler(sizes, p, seed=21)
    head = sampler.draw(first)
    state = sampler.state_dict()
    resumed = TaskSampler(sizes, p, seed=21)
    resumed.load_state_dict(state)
    tail = resumed.draw(60)
    assert head + tail == unbroken
    assert sampler.draw(60) == tail  # the saved state was a snapshot: the original goes on identically


def test_resume_exactly_at_a_task_boundary():
    sizes, p = [3, 4], np.array([0.5, 0.5])
    sampler = TaskSampler(sizes, p, seed=2)
    drawn = []
    while sampler.cursors[0] != sizes[0]:  # stop with task 0 exhausted, its reshuffle still pending
        drawn += sampler.draw(1)
    assert sampler.passes[0] == 0
    state = json.loads(json.dumps(sampler.state_dict()))  # plain data: survives a JSON round trip
    resumed = TaskSampler(sizes, p, seed=2)
    resumed.load_state_dict(state)
    tail = resumed.draw(40)
    assert drawn + tail == TaskSampler(sizes, p, seed=2).draw(len(drawn) + 40)
    assert resumed.passes[0] >= 1


def test_fresh_sampler_without_state_differs_from_resumed():
    sizes, p = [3, 4], np.array([0.5, 0.5])
    sampler = TaskSampler(sizes, p, seed=21)
    sampler.draw(10)
    state = sampler.state_dict()
    expected = sampler.draw(30)
    assert TaskSampler(sizes, p, seed=21).draw(30) != expected  # so the resume test above is not vacuous
    resumed = TaskSampler(sizes, p, seed=21)
    resumed.load_state_dict(state)
    assert resumed.draw(30) == expected


# ---- MixedBatches -------------------------------------------------------------------------------------------------


def identified_tasks(sizes: list[int]) -> list[TaskData]:
    """Sample (t, i) has input_ids [t, i, ...] with a varying length, so a batch row names its sample."""
    return [
        TaskData(f"t{t}", [Sample([t, i] + [5] * (i % 4), [t, i] + [5] * (i % 4), t) for i in range(n)], [])
        for t, n in enumerate(sizes)
    ]


def rows(batch: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    ids = batch["input_ids"]
    assert torch.equal(batch["task_ids"][:, 0], ids[:, 0])
    return [(int(t), int(i)) for t, i in ids[:, :2].tolist()]


def test_ranks_split_the_single_rank_stream():
    tasks, p = identified_tasks([50, 70]), np.array([0.4, 0.6])
    single = MixedBatches(tasks, p, micro_batch_size=8, pad_token_id=-1, seed=4)
    rank0 = MixedBatches(tasks, p, micro_batch_size=4, pad_token_id=-1, seed=4, rank=0, world_size=2)
    rank1 = MixedBatches(tasks, p, micro_batch_size=4, pad_token_id=-1, seed=4, rank=1, world_size=2)
    seen0, seen1 = set(), set()
    for _ in range(5):  # 40 draws, within a single pass of either task: all distinct
        whole, r0, r1 = rows(single.next()), rows(rank0.next()), rows(rank1.next())
        assert len(r0) == len(r1) == 4 and len(whole) == 8
        assert not set(r0) & set(r1)
        assert set(r0) | set(r1) == set(whole)
        seen0 |= set(r0)
        seen1 |= set(r1)
    assert len(seen0) == len(seen1) == 20
    assert not seen0 & seen1
    assert rank0.state_dict() == rank1.state_dict()
    # the single rank's position is the same draws, in rounds of one draw instead of two
    assert rank0.sampler.rounds * 2 == single.sampler.rounds == 40
    assert {**rank0.state_dict()["sampler"], "rounds": 0} == {**single.state_dict()["sampler"], "rounds": 0}


def test_batch_contents_come_from_the_drawn_samples():
    tasks, p = identified_tasks([6, 9]), np.array([0.5, 0.5])
    batches = MixedBatches(tasks, p, micro_batch_size=3, pad_token_id=-1, seed=0)
    expected = TaskSampler([6, 9], p, seed=0).draw(3 * 4)
    got = [pair for _ in range(4) for pair in rows(batches.next())]
    assert got == expected
    batch = MixedBatches(tasks, p, micro_batch_size=3, pad_token_id=-1, seed=0).next()
    for row, (t, i) in enumerate(expected[:3]):
        n = 2 + i % 4
        assert batch["labels"][row, :n].tolist() == tasks[t].train[i].labels
        assert batch["attention_mask"][row].sum() == n


def test_mixed_batches_state_round_trip():
    tasks, p = identified_tasks([5, 8, 3]), np.array([0.3, 0.5, 0.2])
    batches = MixedBatches(tasks, p, micro_batch_size=4, pad_token_id=-1, seed=11, rank=1, world_size=2)
    for _ in range(6):
        batches.next()
    state = batches.state_dict()
    expected = [batches.next() for _ in range(6)]
    resumed = MixedBatches(tasks, p, micro_batch_size=4, pad_token_id=-1, seed=11, rank=1, world_size=2)
    resumed.load_state_dict(state)
    for want in expected:
        got = resumed.next()
        assert got.keys() == want.keys()
        for name in want:
            assert torch.equal(got[name], want[name]), name
    fresh = MixedBatches(tasks, p, micro_batch_size=4, pad_token_id=-1, seed=11, rank=1, world_size=2)
    assert rows(fresh.next()) != rows(expected[0])


# ---- validation_batches -------------------------------------------------------------------------------------------


def val_tasks() -> list[TaskData]:
    return [
        TaskData("a", [], [Sample([0, i], [0, i], 0) for i in range(5)]),
        TaskData("b", [], [Sample([1, i], [1, i], 1) for i in range(3)]),
    ]


def test_validation_batches_single_rank_in_order():
    batches = list(validation_batches(val_tasks(), batch_size=2, pad_token_id=-1))
    assert [rows(b) for b in batches] == [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 4)], [(1, 0), (1, 1)], [(1, 2)]]


def test_validation_batches_split_across_ranks():
    tasks = val_tasks()
    rank0 = [rows(b) for b in validation_batches(tasks, batch_size=2, pad_token_id=-1, rank=0, world_size=2)]
    rank1 = [rows(b) for b in validation_batches(tasks, batch_size=2, pad_token_id=-1, rank=1, world_size=2)]
    assert rank0 == [[(0, 0), (0, 2)], [(0, 4)], [(1, 0), (1, 2)]]
    assert rank1 == [[(0, 1), (0, 3)], [(0, 0)], [(1, 1)]]  # the same count on every rank (ZeRO-3) ...
    filler = list(validation_batches(tasks, batch_size=2, pad_token_id=-1, rank=1, world_size=2))[1]
    assert (filler["labels"] == IGNORE).all()  # ... but the filler batch counts for nothing


def test_resume_refuses_state_from_another_seed_or_data():
    state = TaskSampler([5, 7], [0.5, 0.5], seed=1).state_dict()
    with pytest.raises(ValueError, match="same trainer.seed"):
        TaskSampler([5, 7], [0.5, 0.5], seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="same trainer.seed"):
        TaskSampler([5, 8], [0.5, 0.5], seed=1).load_state_dict(state)


def packed_items(batch: dict[str, torch.Tensor]) -> list[tuple[int, int]]:
    """The (task, index) of every sample in a packed batch: each starts where position_ids is 0 and is real."""
    starts = (batch["position_ids"] == 0) & (batch["task_ids"] >= 0)
    return [(int(batch["input_ids"][r, c]), int(batch["input_ids"][r, c + 1])) for r, c in starts.nonzero().tolist()]


def test_packed_ranks_take_disjoint_residue_classes_of_one_stream():
    """Packing makes ranks consume different numbers of samples; each still takes every world_size-th draw."""
    tasks, p = identified_tasks([400, 400]), np.array([0.5, 0.5])
    ranks = [MixedBatches(tasks, p, 3, pad_token_id=-1, seed=9, rank=r, world_size=2, pack_to=16) for r in (0, 1)]
    stream = TaskSampler([400, 400], p, seed=9).draw(2000)
    for rank, batches in enumerate(ranks):
        placed = [item for _ in range(6) for item in packed_items(batches.next())]
        consumed = placed + batches.pending
        assert len(set(consumed)) == len(consumed)
        assert set(consumed) == set(stream[rank::2][: len(consumed)])  # this rank's draws, none skipped
    consumed_by = [packed_items(b.next()) for b in ranks]
    assert not set(consumed_by[0]) & set(consumed_by[1])
