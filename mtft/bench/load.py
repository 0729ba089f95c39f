"""`mtft-bench load`: preprocessing 50 generated tasks of 200k short samples in all, in bounded memory.

The reliability matrix's "load" row: the real `load_tasks` (reading, `datasets.map` tokenizing into a cold
MTFT_CACHE_DIR, the length and bad-record policies, the split) on generated JSONL, timed, with the peak RSS, and
with every task's account checked against what the generator wrote: lines read = samples + dropped, per drop
reason; train + val = samples; the lines read over all tasks = the lines written.

Each size runs in a fresh subprocess (`python -m mtft.bench.load --measure DIR`), so one measurement's peak RSS is not
another's (ru_maxrss never goes down). The samples themselves must live in RAM, so "bounded" means the growth
during preprocessing stays a small multiple of the kept token data; running N/4, N/2 and N shows whether it grows
linearly with the samples or worse (records held several times over, or a whole task's raw text kept in RAM).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mtft.bench.isolated import reset_peak, status_kib
from mtft.data.config import DataConfig
from mtft.data.synthetic import TASKS as DEMO_GENERATORS

FORMATS = ("messages", "sharegpt", "alpaca", "prompt_response", "chat_rounds", "text")
BAD_EVERY = 5  # every 5th task gets deliberately bad records, so the drop accounting has something to count
MIN_TASK_SIZE = 20  # lines: enough for a train/validation split after the bad ones are dropped
COLUMNS = (  # the table's (header, measurement, format)
    ("samples", "samples", "d"),
    ("cold s", "cold_seconds", ".1f"),
    ("cold cpu s", "cold_cpu_seconds", ".1f"),
    ("samples/s", "samples_per_second", ".0f"),
    ("warm s", "warm_seconds", ".1f"),
    ("peak RSS", "peak_rss_mib", ".0f"),
    ("growth", "peak_growth_mib", ".0f"),
    ("anon growth", "peak_anonymous_growth_mib", ".0f"),
    ("held", "held_growth_mib", ".0f"),
    ("tokens MiB", "token_data_mib", ".1f"),
)


def task_sizes(tasks: int, samples: int, exponent: float = 1.0) -> list[int]:
    """Zipf-like sizes (task i ∝ 1/(i+1)^exponent) of at least MIN_TASK_SIZE each, summing to exactly `samples`:
    a few large tasks and a long tail of small ones, as in real multi-task mixtures."""
    if samples < tasks * MIN_TASK_SIZE:
        raise ValueError(f"{samples} samples cannot give {tasks} tasks {MIN_TASK_SIZE} each")
    weights = [1 / (i + 1) ** exponent for i in range(tasks)]
    spare = samples - tasks * MIN_TASK_SIZE
    shares = [spare * w / sum(weights) for w in weights]
    sizes = [MIN_TASK_SIZE + int(s) for s in shares]
    by_remainder = sorted(range(tasks), key=lambda i: int(shares[i]) - shares[i])  # largest remainder first
    for i in by_remainder[: samples - sum(sizes)]:
        sizes[i] += 1
    return sizes


def _record(fmt: str, prompt: str, answer: str) -> dict[str, Any]:
    if fmt == "messages":
        return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
    if fmt == "sharegpt":
        return {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]}
    if fmt == "chat_rounds":
        return {"chat_rounds": [{"role": "human", "content": prompt}, {"role": "bot", "content": answer}]}
    if fmt == "alpaca":
        return {"instruction": prompt, "output": answer}
    if fmt == "prompt_response":
        return {"prompt": prompt, "response": answer}
    return {"text": f"{prompt} {answer}"}


def _bad_lines(rng: random.Random, max_seq_len: int) -> list[tuple[str, str]]:
    """(line, the reason `load_tasks` must drop it under) for one to three records of each kind."""
    overlong = "x" * (2 * max_seq_len)  # the byte tokenizer gives at least one token per character
    kinds = [
        ('{"messages": [{"role": "user", "content": "cut off', "malformed_json"),
        ("[1, 2, 3]", "not_an_object"),
        ('{"question": "no known format"}', "unknown_format"),
        (json.dumps({"messages": [{"role": "user", "content": "no answer"}]}), "no_assistant_turn"),
        (json.dumps(_record("messages", overlong, "too long")), "too_long"),
    ]
    return [kind for kind in kinds for _ in range(rng.randint(1, 3))]


def write_load_case(out_dir: str | Path, tasks: int = 50, samples: int = 200_000, seed: int = 0) -> dict[str, Any]:
    """Write `tasks` JSONL files holding `samples` lines in all, and a manifest of what each must yield.

    Deterministic from `seed`. Each task has its own format and demo generator; every BAD_EVERY-th task mixes
    bad and overlong records in at random places, and the manifest counts them per drop reason. Lines are
    written as they are made: the generator itself holds no task in memory.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    max_seq_len = DataConfig.__dataclass_fields__["max_seq_len"].default
    generators = list(DEMO_GENERATORS.values())
    manifest: dict[str, Any] = {"tasks": {}, "lines": samples, "seed": seed, "max_seq_len": max_seq_len}
    for index, size in enumerate(task_sizes(tasks, samples)):
        rng = random.Random(seed * 1_000_003 + index)
        fmt, (make, _, _) = FORMATS[index % len(FORMATS)], generators[index % len(generators)]
        bad = _bad_lines(rng, max_seq_len) if index % BAD_EVERY == 0 else []
        bad_at = dict(zip(rng.sample(range(size), len(bad)), bad, strict=True))
        path = out_dir / f"task{index:02d}.jsonl"
        dropped: dict[str, int] = {}
        with path.open("w") as handle:
            for line in range(size):
                if line in bad_at:
                    text, reason = bad_at[line]
                    dropped[reason] = dropped.get(reason, 0) + 1
                else:
                    text = json.dumps(_record(fmt, *make(rng)))
                handle.write(text + "\n")
        manifest["tasks"][f"task{index:02d}"] = {"path": str(path), "lines": size, "dropped": dropped}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def count_mismatches(reports: dict[str, dict[str, Any]], manifest: dict[str, Any]) -> list[str]:
    """Every way the per-task reports disagree with themselves or with what was written; empty when all add up."""
    problems = []
    for name, expected in manifest["tasks"].items():
        r = reports.get(name)
        if r is None:
            problems.append(f"{name}: no report")
            continue
        if r["lines_read"] != r["samples"] + sum(r["dropped"].values()):
            problems.append(f"{name}: lines_read {r['lines_read']} != samples {r['samples']} + dropped {r['dropped']}")
        if r["train_samples"] + r["val_samples"] != r["samples"]:
            problems.append(f"{name}: train {r['train_samples']} + val {r['val_samples']} != samples {r['samples']}")
        if r["lines_read"] != expected["lines"]:
            problems.append(f"{name}: read {r['lines_read']} lines, {expected['lines']} were written")
        if r["dropped"] != expected["dropped"]:
            problems.append(f"{name}: dropped {r['dropped']}, the generator wrote {expected['dropped']} bad lines")
    if set(reports) != set(manifest["tasks"]):
        problems.append(f"tasks reported {sorted(reports)} != tasks written {sorted(manifest['tasks'])}")
    if sum(r["lines_read"] for r in reports.values()) != manifest["lines"]:
        problems.append(f"{sum(r['lines_read'] for r in reports.values())} lines read, {manifest['lines']} written")
    return problems


class AnonymousPeak:
    """The peak of RssAnon, sampled every `interval` seconds in a thread while the block runs. VmHWM also counts
    the pages of the memory-mapped cache files a task is read from, which the kernel can drop at will; the kernel
    keeps no peak of the process's own (anonymous) memory, so it is sampled."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak_kib = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, status_kib("RssAnon"))
            self._stop.wait(self.interval)

    def __enter__(self) -> AnonymousPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, status_kib("RssAnon"))


def _cpu_seconds() -> float:
    """User + system time of this process and its reaped children (the `datasets.map` workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(directory: Path) -> dict[str, Any]:
    """In this process: `load_tasks` on the case in `directory` into a cold cache, timed and accounted for."""
    from mtft.data.config import TaskSpec
    from mtft.data.tasks import load_tasks
    from mtft.models import build_byte_tokenizer

    manifest = json.loads((directory / "manifest.json").read_text())
    specs = [TaskSpec(name=name, path=task["path"]) for name, task in manifest["tasks"].items()]
    cfg = DataConfig(tasks=specs, max_seq_len=manifest["max_seq_len"], bad_records="drop", overlong="drop")
    cache = directory / "cache"
    if cache.exists() and any(cache.iterdir()):
        raise RuntimeError(f"{cache} is not empty: the measurement needs a cold cache")
    os.environ["MTFT_CACHE_DIR"] = str(cache)
    tokenizer = build_byte_tokenizer()
    gc.collect()
    baseline_kib, baseline_anon_kib, cpu_start = status_kib("VmRSS"), status_kib("RssAnon"), _cpu_seconds()
    imports_peak_kib = status_kib("VmHWM")  # the interpreter's peak so far, before the reset below
    reset_peak()
    with AnonymousPeak() as anonymous:
        start = time.perf_counter()
        tasks = load_tasks(cfg, tokenizer, seed=0)
        seconds = time.perf_counter() - start
    cpu_seconds = _cpu_seconds() - cpu_start
    peak_kib, held_kib = status_kib("VmHWM"), status_kib("VmRSS")
    samples = sum(len(t.train) + len(t.val) for t in tasks)
    tokens = sum(len(s.input_ids) for t in tasks for s in (*t.train, *t.val))
    reports = {t.name: t.report for t in tasks}
    del tasks
    gc.collect()
    start = time.perf_counter()
    load_tasks(cfg, tokenizer, seed=0)
    warm_seconds = time.perf_counter() - start
    process_peak_kib = max(imports_peak_kib, status_kib("VmHWM"))
    mib = 1 / 1024
    return {
        "lines": manifest["lines"],
        "samples": samples,
        "tokens": tokens,
        "cold_seconds": seconds,
        "cold_cpu_seconds": cpu_seconds,  # less sensitive than wall time to other work on the machine
        "warm_seconds": warm_seconds,
        "samples_per_second": samples / seconds,
        "baseline_rss_mib": baseline_kib * mib,
        "peak_rss_mib": peak_kib * mib,  # the process's peak during preprocessing (imports included in baseline)
        "peak_growth_mib": (peak_kib - baseline_kib) * mib,
        "held_growth_mib": (held_kib - baseline_kib) * mib,  # what the loaded samples keep resident
        "peak_anonymous_growth_mib": (anonymous.peak_kib - baseline_anon_kib) * mib,  # without mapped cache files
        # the whole interpreter's peak, from its own memory map: ru_maxrss can carry the parent's resident size
        # over from a fork (Linux keeps it across exec), so a large parent (a long pytest session) inflates it
        "process_peak_mib": process_peak_kib * mib,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * mib,
        "children_ru_maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * mib,  # map workers
        "token_data_mib": tokens * 2 * 4 / 2**20,  # input_ids + labels as int32: the token data, compactly
        "mismatches": count_mismatches(reports, manifest),
        "reports": reports,
    }


def measure_in_subprocess(tasks: int, samples: int, seed: int = 0, timeout: float = 1800) -> dict[str, Any]:
    """Generate the case, then measure it in a fresh interpreter: its ru_maxrss is this measurement's alone."""
    with tempfile.TemporaryDirectory(prefix="mtft-load-") as tmp:
        write_load_case(tmp, tasks, samples, seed)
        command = [sys.executable, "-m", "mtft.bench.load", "--measure", tmp]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        return json.loads((Path(tmp) / "result.json").read_text())


def run(tasks: int = 50, samples: int = 200_000, scaling: bool = True, seed: int = 0) -> dict[str, Any]:
    """Measure N (and N/4, N/2 with `scaling`) samples over `tasks` tasks, each in its own subprocess."""
    sizes = [samples // 4, samples // 2, samples] if scaling else [samples]
    runs = {size: measure_in_subprocess(tasks, size, seed) for size in sizes}
    full, smallest = runs[sizes[-1]], runs[sizes[0]]
    ratios = {
        "counts_add_up": float(all(not r["mismatches"] for r in runs.values())),
        "samples_per_second": full["samples_per_second"],
        "peak_growth_over_token_data": full["peak_growth_mib"] / full["token_data_mib"],
        "held_growth_over_token_data": full["held_growth_mib"] / full["token_data_mib"],
    }
    if scaling:  # 1.0: as much growth per sample at N as at N/4, i.e. the peak grows linearly with the samples
        ratios["growth_per_sample_full_over_quarter"] = (full["peak_growth_mib"] / full["samples"]) / (
            smallest["peak_growth_mib"] / smallest["samples"]
        )
    for r in runs.values():
        r.pop("reports")  # 50 tasks per size: the verdict on their counts is `mismatches`
    return {"suite": "load", "tasks": tasks, "cpu_count": os.cpu_count(), "runs": runs, "ratios": ratios}


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['tasks']} tasks, {result['cpu_count']} CPUs; MiB; growth: above the RSS before load_tasks")
    print(f"{'lines':>9}" + "".join(f"{header:>12}" for header, _, _ in COLUMNS) + f"{'adds up':>9}")
    for lines, r in result["runs"].items():
        cells = "".join(f"{r[key]:>12{spec}}" for _, key, spec in COLUMNS)
        print(f"{lines:>9}{cells}{'yes' if not r['mismatches'] else 'NO':>9}")
        for problem in r["mismatches"]:
            print(f"  {problem}")
    print(f"\n{'ratio':<45}{'value':>10}")
    for name, value in result["ratios"].items():
        print(f"{name:<45}{value:>10.4f}")


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when every task's counts add up at every size, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="mtft-bench load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=50, help="generated tasks (default 50)")
    parser.add_argument("--samples", type=int, default=200_000, help="lines in all, bad ones included (200000)")
    parser.add_argument("--quick", action="store_true", help="50 tasks, 5,000 lines: a smoke test of the suite")
    parser.add_argument("--no-scaling", dest="scaling", action="store_false", help="skip the N/4 and N/2 runs")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed")
    parser.add_argument("--out", type=Path, help="write the measurements and ratios here as JSON")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.samples = 50, 5_000
    result = run(args.tasks, args.samples, args.scaling, args.seed)
    result.update(date=time.strftime("%Y-%m-%d"), command=" ".join(["mtft-bench", "load", *argv]))
    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"written to {args.out}", file=sys.stderr)
    return 0 if result["ratios"]["counts_add_up"] == 1.0 else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:  # the measuring subprocess: python -m mtft.bench.load --measure DIR
        case = Path(sys.argv[2])
        (case / "result.json").write_text(json.dumps(measure(case)))
    else:
        sys.exit(main())
