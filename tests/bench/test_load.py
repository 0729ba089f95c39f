"""The reliability matrix's load row (issue 11): 50 generated tasks preprocessed in bounded memory, with every
task's count adding up. The full 200k-sample case is `mtft-bench load` (docs/results/load.md); on 2 cores it takes
minutes, so the test runs the same 50 tasks at 20k samples."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from mtft.bench import load
from mtft.data.config import DataConfig, TaskSpec
from mtft.data.tasks import load_tasks
from mtft.data.tokenize import IGNORE
from mtft.models import build_byte_tokenizer

TEST_SAMPLES = 20_000
# Generous: the loader measured 34 MiB above its starting RSS for these 20k samples (7 MiB of token data),
# and 55 MiB before its rows were converted in batches and their ints pooled.
GROWTH_BOUND_MIB = 120
PEAK_RSS_BOUND_MIB = 1536  # the whole subprocess, torch and transformers imported: about 540 MiB before loading


def _load(manifest: dict) -> list:
    specs = [TaskSpec(name=name, path=task["path"]) for name, task in manifest["tasks"].items()]
    cfg = DataConfig(tasks=specs, bad_records="drop", overlong="drop")
    return load_tasks(cfg, build_byte_tokenizer(), seed=0)


def test_task_sizes_are_zipf_like_and_sum_exactly():
    sizes = load.task_sizes(50, 200_000)
    assert len(sizes) == 50 and sum(sizes) == 200_000
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] / sizes[1] == pytest.approx(2, rel=0.01)  # 1/rank: the second task is half the first
    assert sizes[0] > 40 * sizes[-1]
    assert load.task_sizes(50, 50 * load.MIN_TASK_SIZE) == [load.MIN_TASK_SIZE] * 50
    with pytest.raises(ValueError):
        load.task_sizes(50, 50 * load.MIN_TASK_SIZE - 1)


def test_the_generator_is_deterministic_and_its_manifest_counts_every_line(tmp_path):
    first = load.write_load_case(tmp_path / "a", tasks=12, samples=3_000, seed=3)
    again = load.write_load_case(tmp_path / "b", tasks=12, samples=3_000, seed=3)
    other = load.write_load_case(tmp_path / "c", tasks=12, samples=3_000, seed=4)

    def read(manifest: dict, name: str) -> bytes:
        return Path(manifest["tasks"][name]["path"]).read_bytes()

    assert all(read(first, name) == read(again, name) for name in first["tasks"])
    assert read(first, "task01") != read(other, "task01")
    assert sum(t["lines"] for t in first["tasks"].values()) == first["lines"] == 3_000
    for index, (name, task) in enumerate(first["tasks"].items()):
        assert read(first, name).count(b"\n") == task["lines"]
        assert bool(task["dropped"]) == (index % load.BAD_EVERY == 0)
    assert set(first["tasks"]["task00"]["dropped"]) == {
        "malformed_json",
        "not_an_object",
        "unknown_format",
        "no_assistant_turn",
        "too_long",
    }


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    """10 tasks, 1,500 lines, bad ones included: loaded in this process, into a cache of their own."""
    root = tmp_path_factory.mktemp("load_case")
    manifest = load.write_load_case(root / "data", tasks=10, samples=1_500, seed=0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTFT_CACHE_DIR", str(root / "cache"))
        tasks = _load(manifest)
    return manifest, tasks, root / "cache" / "preprocessed"


def test_the_loaded_counts_match_what_was_written(small_case):
    manifest, tasks, _ = small_case
    reports = {t.name: t.report for t in tasks}
    assert load.count_mismatches(reports, manifest) == []
    bad = sum(sum(t["dropped"].values()) for t in manifest["tasks"].values())
    assert bad > 0
    assert sum(len(t.train) + len(t.val) for t in tasks) == manifest["lines"] - bad


def test_preprocessing_leaves_only_finished_cache_entries(small_case):
    """Raw records and `map` output are streamed to a work directory beside the entry, removed once it is saved."""
    _, _, cache = small_case
    entries = [p.name for p in cache.iterdir()]
    assert len(entries) == 10
    assert not [name for name in entries if name.endswith((".work", ".partial"))]
    assert all((cache / name / "dataset_info.json").is_file() for name in entries)


def test_count_mismatches_catches_each_broken_count(small_case):
    """The check the benchmark and the load test rely on finds each kind of wrong account."""
    manifest, tasks, _ = small_case
    reports = {t.name: t.report for t in tasks}

    def problems(task: str, change) -> str:
        copied = copy.deepcopy(reports)
        change(copied[task])
        return " | ".join(load.count_mismatches(copied, manifest))

    assert "lines_read" in problems("task01", lambda r: r.update(lines_read=r["lines_read"] + 1))
    assert "train" in problems("task02", lambda r: r.update(train_samples=r["train_samples"] - 1))
    assert "dropped" in problems("task00", lambda r: r["dropped"].pop("too_long"))
    without_one = {name: report for name, report in reports.items() if name != "task09"}
    assert "task09: no report" in load.count_mismatches(without_one, manifest)


def test_held_samples_share_their_token_ints(small_case):
    """Pooled ints: one IGNORE object per task, not a fresh 32-byte int for every prompt token of every sample."""
    _, tasks, _ = small_case
    ignored = [x for t in tasks for s in (*t.train, *t.val) for x in s.labels if x == IGNORE]
    assert len(ignored) > 10_000
    assert len({id(x) for x in ignored}) <= len(tasks)


@pytest.mark.integration
def test_fifty_tasks_preprocess_in_bounded_memory_and_every_count_adds_up(tmp_path):
    """A cold cache, measured in a fresh interpreter so earlier tests do not raise its ru_maxrss."""
    result = load.measure_in_subprocess(tasks=50, samples=TEST_SAMPLES, seed=0)
    written = load.write_load_case(tmp_path, tasks=50, samples=TEST_SAMPLES, seed=0)  # the same, deterministically
    bad = sum(sum(t["dropped"].values()) for t in written["tasks"].values())
    print(json.dumps({k: v for k, v in result.items() if k != "reports"}, indent=1))
    assert result["mismatches"] == []
    assert len(result["reports"]) == 50
    assert sum(r["lines_read"] for r in result["reports"].values()) == TEST_SAMPLES
    assert result["samples"] == TEST_SAMPLES - bad
    assert result["peak_growth_mib"] < GROWTH_BOUND_MIB
    assert result["process_peak_mib"] < PEAK_RSS_BOUND_MIB  # VmHWM: ru_maxrss can inherit the parent's size
