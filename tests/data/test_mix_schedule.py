"""Mixes that change during a run (balancer.apply_to=sampling): the sampler draws each round with the mix that
round was given (TaskSampler.follow), so ranks that use up rounds at different rates (packing) still draw one
stream between them, and a resumed sampler continues it exactly."""

from __future__ import annotations

import numpy as np
import pytest

from mtft.data.adaptive_mix import AdaptiveMix
from mtft.data.batches import MixedBatches
from mtft.data.sampler import TaskSampler
from tests.data.test_sampler import identified_tasks, packed_items


def test_draw_frequencies_lie_within_binomial_bounds_of_a_stub_mix():
    """Stub weights (4, 1, 0.25) over a uniform static mix give p = (16, 4, 1)/21 (no floor, no smoothing): the
    counts of 21,000 draws each lie within 5 binomial standard deviations of n·p."""
    mix = AdaptiveMix(np.full(3, 1 / 3), floor=0.0, smoothing=0.0)
    p = mix.follow(np.array([4.0, 1.0, 0.25]))
    np.testing.assert_allclose(p, np.array([16, 4, 1]) / 21)
    sampler = TaskSampler([50, 50, 50], np.full(3, 1 / 3), seed=0)
    sampler.follow(p, from_round=0)
    n = 21_000
    counts = np.bincount([task for task, _ in sampler.draw(n)], minlength=3)
    assert np.all(np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p))), counts


def test_a_mix_starts_at_its_round_and_a_past_round_is_refused():
    sampler = TaskSampler([10, 10], np.array([1.0, 0.0]), seed=1)
    sampler.follow(np.array([0.0, 1.0]), from_round=5)
    tasks = [sampler.draw(2)[0][0] for _ in range(8)]
    assert tasks == [0] * 5 + [1] * 3
    assert len(sampler.schedule) == 1  # the mix of rounds behind is dropped
    with pytest.raises(ValueError, match="past"):
        sampler.follow(np.array([0.5, 0.5]), from_round=7)


def test_the_schedule_is_part_of_the_saved_state():
    sampler = TaskSampler([10, 10], np.array([0.5, 0.5]), seed=2)
    sampler.draw(3)
    sampler.follow(np.array([0.9, 0.1]), from_round=4)  # a round not reached yet: still to come
    resumed = TaskSampler([10, 10], np.array([0.5, 0.5]), seed=2)
    resumed.load_state_dict(sampler.state_dict())
    assert [resumed.draw(1) for _ in range(20)] == [sampler.draw(1) for _ in range(20)]


def test_two_packed_ranks_draw_each_round_with_one_mix_and_no_sample_twice_or_never():
    """Two ranks pack samples of different lengths, so they use up rounds at different rates. After every step the
    mix moves, from the furthest round either rank has used (what the step's all-reduce tells both). Then each
    round was drawn with the same mix on both ranks, and the ranks' draws are the two slots of one stream: the
    stream a single sampler draws with the same schedule, none of it skipped or drawn twice."""
    sizes = [300, 300, 300]
    tasks, static = identified_tasks(sizes), np.full(3, 1 / 3)
    ranks = [MixedBatches(tasks, static, 2, pad_token_id=-1, seed=5, rank=r, world_size=2, pack_to=12) for r in (0, 1)]
    drawn: list[list[tuple[int, tuple[int, int], tuple[float, ...]]]] = [[], []]  # (round, item, mix) per rank
    for rank, batches in enumerate(ranks):
        draw = batches.sampler.draw

        def logged(count, rank=rank, sampler=batches.sampler, draw=draw):
            round_, mix = sampler.rounds, tuple(sampler._mix())
            items = draw(count)
            drawn[rank].append((round_, items[rank], mix))
            return items

        batches.sampler.draw = logged
    mix, schedule = AdaptiveMix(static, floor=0.1, smoothing=0.5), []
    rng = np.random.default_rng(0)
    trained: list[list[tuple[int, int]]] = [[], []]
    for _ in range(40):  # steps
        for rank, batches in enumerate(ranks):
            trained[rank] += packed_items(batches.next())
        furthest = max(b.rounds for b in ranks)
        p = mix.follow(np.exp(rng.normal(0, 1, size=3)))  # the balancer's new weights, the same on every rank
        schedule.append((furthest, p.copy()))
        for batches in ranks:
            batches.follow(p, furthest)
    assert ranks[0].rounds != ranks[1].rounds  # packing made them use rounds at different rates

    mixes = [{round_: m for round_, _, m in drawn[rank]} for rank in (0, 1)]
    common = set(mixes[0]) & set(mixes[1])
    assert len(common) > 100 and all(mixes[0][r] == mixes[1][r] for r in common)
    assert len({mixes[0][r] for r in common}) > 30  # the mix did move

    single, reference, changes = TaskSampler(sizes, static, seed=5), [], iter(schedule)
    change = next(changes, None)
    for round_ in range(max(b.rounds for b in ranks)):
        while change is not None and change[0] <= round_:  # the mix given from this round on
            single.follow(change[1], round_)
            change = next(changes, None)
        reference.append(single.draw(2))
    for rank, batches in enumerate(ranks):
        items = [item for _, item, _ in drawn[rank]]
        assert items == [reference[r][rank] for r in range(batches.rounds)]  # its slot of the one stream
        assert sorted(trained[rank] + batches.pending) == sorted(items)  # every draw trained or waiting
    together = [item for rank in (0, 1) for _, item, _ in drawn[rank]]
    assert len(together) == len(set(together))  # within one pass of each task: no sample twice
