"""`mtft-bench data`: what packing buys, and what the data pipeline costs, in one process.

1. Real-token fraction of packed rows on the demo mixture: rows of `max_seq_len`, `micro_batch_size` of them.
2. Training tokens/s (real tokens), packed ÷ padded, on a mixture whose sample lengths vary by more than 4×
   (the demo tasks plus a long `echo` task), with the same model and a similar number of token slots per step
   (32 padded samples, or 16 packed rows of 1024).
3. The data pipeline's share of step time (drawing, collating and packing a micro-batch) in the packed run.
"""

from __future__ import annotations

import json
import random
import string
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.base import AdapterRuntime
from mtft.config.train import TrainConfig
from mtft.data.batches import MixedBatches
from mtft.data.config import DataConfig, TaskSpec
from mtft.data.sampler import mixing_probabilities
from mtft.data.synthetic import DEMO_DATA_DIR, TASKS
from mtft.data.tasks import load_tasks
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from mtft.training.engine import build_engine, init_distributed
from mtft.training.step import optimizer_step, step_batches

DEMO_TASKS = [TaskSpec(name=n, path=str(DEMO_DATA_DIR / f"{n}.jsonl")) for n in TASKS]


def real_token_fraction(data: DataConfig, rows: int, batches: int = 100) -> float:
    tokenizer = build_byte_tokenizer()
    tasks = load_tasks(data, tokenizer, seed=0)
    probabilities = mixing_probabilities([len(t.train) for t in tasks], data)
    stream = MixedBatches(tasks, probabilities, rows, tokenizer.pad_token_id, 0, pack_to=data.max_seq_len)
    real = total = 0
    for _ in range(batches):
        batch = stream.next()
        real += int((batch["task_ids"] >= 0).sum())
        total += batch["input_ids"].numel()
    return real / total


def _echo_task(directory: Path, count: int = 300) -> TaskSpec:
    """Long samples: repeat 150-300 characters (about 5x the demo's mean length)."""
    rng = random.Random(7)
    lines = []
    for _ in range(count):
        text = "".join(rng.choices(string.ascii_lowercase + " ", k=rng.randint(150, 300)))
        messages = [{"role": "user", "content": f"Repeat: {text}"}, {"role": "assistant", "content": text}]
        lines.append(json.dumps({"messages": messages}))
    path = directory / "echo.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return TaskSpec(name="echo", path=str(path))


def training_throughput(data: DataConfig, micro_batch_size: int, steps: int) -> dict[str, float | int]:
    """Tokens/s of real training steps, and the share of step time spent producing the batches."""
    tokenizer = build_byte_tokenizer()
    tasks = load_tasks(data, tokenizer, seed=0)
    cfg = TrainConfig(data=data)
    cfg.trainer.micro_batch_size = micro_batch_size
    cfg.trainer.max_steps = steps
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2), tokenizer)
    engine = build_engine(ADAPTERS["lora"].inject(model, cfg.adapter), cfg, world_size=1)
    probabilities = mixing_probabilities([len(t.train) for t in tasks], data)
    pack_to = data.max_seq_len if data.packing else None
    stream = MixedBatches(tasks, probabilities, micro_batch_size, tokenizer.pad_token_id, 0, pack_to=pack_to)
    weights = torch.ones(len(tasks))
    data_seconds = tokens = 0.0

    def step(batch):  # every task weighs 1; the adapter (LoRA) has no runtime hooks
        return optimizer_step(
            engine, step_batches([batch], len(tasks)), weights, AdapterRuntime(), lambda w, counts: w
        )

    step(stream.next())  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = stream.next()
        data_seconds += time.perf_counter() - t0
        tokens += step(batch).tokens
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "data_share": data_seconds / seconds,
    }


def run(quick: bool = False) -> dict[str, Any]:
    steps, shrink = (2, 4) if quick else (10, 1)  # quick: the code path at a quarter of the rows, not a measurement
    init_distributed()
    fractions = {
        f"demo_len{length}_rows{rows}": real_token_fraction(DataConfig(tasks=DEMO_TASKS, max_seq_len=length), rows)
        for length, rows in ((128, 16), (512, 16), (2048, 4))
    }
    with tempfile.TemporaryDirectory() as tmp:
        mixed = dict(tasks=[*DEMO_TASKS, _echo_task(Path(tmp))], max_seq_len=1024, mixing="uniform")
        padded = training_throughput(DataConfig(**mixed), micro_batch_size=32 // shrink, steps=steps)
        packed = training_throughput(DataConfig(**mixed, packing=True), micro_batch_size=16 // shrink, steps=steps)
        lengths = [
            len(s.input_ids) for t in load_tasks(DataConfig(**mixed), build_byte_tokenizer(), 0) for s in t.train
        ]
    return {
        "suite": "data",
        "real_token_fraction": fractions,
        "varied_mixture": {"min_length": min(lengths), "max_length": max(lengths), "padded": padded, "packed": packed},
        "ratios": {
            "packed_over_padded_tokens_per_second": packed["tokens_per_second"] / padded["tokens_per_second"],
            "data_share_of_step_time_packed": packed["data_share"],
            "real_token_fraction_demo_len128": fractions["demo_len128_rows16"],
            "real_token_fraction_demo_len512": fractions["demo_len512_rows16"],
        },
    }
