"""`mtft-bench gpu`: mtft's real training step against a plain PEFT + torch loop, in one process, alternating.

Why: what costs on a GPU is not what costs on a CPU (kernel launches, full-vocabulary logits, masks), so speed
claims are measured where users train. Every configuration is built once and kept resident; then, round after
round, each runs a few timed steps in turn, so drift of clocks or temperature hits all of them alike. Reported:
median step time, tokens/s (real tokens), MFU (logging/throughput.py's FLOP count), and peak GPU memory (the
configuration's own weights and optimizer state, plus the largest transient of its steps).

- `plain`: the baseline the issue defines: PEFT LoRA on the same targets and rank as `lora`, bf16 weights, torch
  AdamW (fused), the model's full logits and plain cross-entropy, on the same micro-batches, prebuilt (it pays
  nothing for data).
- `<adapter>[+compile][+chunked][+ckpt]`: mtft's own step (`training.step.optimizer_step` on the DeepSpeed engine,
  ZeRO-0) with the micro-batch drawn from mtft's packing pipeline inside the timed step, as in training;
  `compile` is trainer.compile, `chunked` trainer.cross_entropy=chunked, `ckpt` trainer.gradient_checkpointing,
  `zero1`/`zero2` the DeepSpeed stage (else ZeRO-0), `fused` trainer.optimizer=fused_adamw.

Model shapes are Qwen2.5's (0.5B, 1.5B, 7B) with random weights, built on the device, nothing downloaded; the
tokenizer is mtft's byte tokenizer, and the data is synthetic: three tasks whose samples fit a packed row whole.
`--dry-run` runs the same code at a tiny shape in fp32 on whatever device is there, for CI.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import string
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mtft.adapters import ADAPTERS, compared_adapters, lora
from mtft.bench import gpu_report
from mtft.bench.gpu_smoke import QWEN_0_5B, TINY
from mtft.config.sections import DeepSpeedConfig, TrainerConfig
from mtft.config.train import TrainConfig
from mtft.data.batches import MixedBatches
from mtft.data.collate import model_inputs
from mtft.data.config import DataConfig, TaskSpec
from mtft.data.sampler import mixing_probabilities
from mtft.data.tasks import load_tasks
from mtft.data.tokenize import IGNORE
from mtft.logging.throughput import attended_positions
from mtft.models import build_byte_tokenizer, compile_blocks, enable_gradient_checkpointing, resolve_attention
from mtft.training.cross_entropy import CROSS_ENTROPY
from mtft.training.engine import build_engine, init_distributed, optimizer_label
from mtft.training.step import StepBatches, optimizer_step, step_batches

SHAPES: dict[str, dict[str, Any]] = {
    "0.5b": QWEN_0_5B,
    "1.5b": dict(QWEN_0_5B, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, intermediate_size=8960),
    "7b": dict(
        QWEN_0_5B,
        vocab_size=152064,
        hidden_size=3584,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        intermediate_size=18944,
        tie_word_embeddings=False,
    ),
    "tiny": dict(TINY, vocab_size=512),
}
FLAGS = ("compile", "chunked", "ckpt", "zero1", "zero2", "fused", "accum2")
LORA_RANK, ALPHA = 64, 128.0


@dataclass
class Setup:
    shape: dict[str, Any]
    precision: str
    device: torch.device
    batch: int
    seq: int
    attention: str


def adapter_config(name: str, model: torch.nn.Module) -> Any:
    """Adapter `name` at LoRA r64's budget on `model` (each config's `at_lora_budget`: the issue's comparison)."""
    configs = compared_adapters(LORA_RANK, ALPHA, model)
    if name not in configs:
        raise ValueError(f"unknown adapter {name!r}; choose {', '.join(configs)}")
    return configs[name]


def synthetic_tasks(directory: Path, seq: int, samples: int = 300, seed: int = 0) -> list[TaskSpec]:
    """Three tasks (echo, reverse, upper) over random lowercase text of seq/16 to 7·seq/16 characters: a sample
    (text in, text out, one byte token per character) fits a packed row whole, and a row holds about three."""
    rng = random.Random(seed)
    specs = []
    for name, answer in (("echo", lambda s: s), ("reverse", lambda s: s[::-1]), ("upper", str.upper)):
        lines = []
        for _ in range(samples):
            text = "".join(rng.choices(string.ascii_lowercase + " ", k=rng.randint(seq // 16, 7 * seq // 16)))
            messages = [{"role": "user", "content": f"{name}: {text}"}, {"role": "assistant", "content": answer(text)}]
            lines.append(json.dumps({"messages": messages}))
        path = directory / f"{name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        specs.append(TaskSpec(name=name, path=str(path)))
    return specs


def build_base(setup: Setup) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**setup.shape, use_cache=False, attn_implementation=setup.attention)
    torch.manual_seed(0)
    with setup.device:  # initialised where it runs: a 7B model is slow to initialise on a CPU
        return Qwen2ForCausalLM(config)


class Plain:
    """The baseline loop: PEFT LoRA, bf16 weights, torch AdamW, full logits and plain cross-entropy."""

    def __init__(self, setup: Setup, batches: list[dict[str, torch.Tensor]]):
        dtype = torch.bfloat16 if setup.precision == "bf16" else torch.float32
        base = build_base(setup)
        self.model = lora.inject(base, lora.LoraConfig(rank=LORA_RANK, alpha=ALPHA)).to(dtype).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
        self.batches, self.index = batches, 0

    def step(self) -> dict[str, torch.Tensor]:
        return self.train_on(self.next_batches())

    def next_batches(self) -> dict[str, torch.Tensor]:
        self.index += 1
        return self.batches[(self.index - 1) % len(self.batches)]

    def train_on(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.model(**model_inputs(batch)).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return batch

    def optimizer_name(self) -> str:
        return optimizer_label(self.optimizer)


class Mtft:
    """mtft's step: the configured adapter on the DeepSpeed engine, micro-batches from the packing pipeline."""

    def __init__(self, setup: Setup, spec: str, data: DataConfig, tokenizer):
        adapter, *flags = spec.split("+")
        unknown = [f for f in flags if f not in FLAGS]
        if unknown:
            raise ValueError(f"{spec}: unknown flag(s) {unknown}; choose from {', '.join(FLAGS)}")
        base = build_base(setup)
        adapter_cfg = adapter_config(adapter, base)
        trainer = TrainerConfig(
            micro_batch_size=setup.batch,
            lr=1e-5,
            warmup_steps=0,
            lr_scheduler="constant",
            cross_entropy="chunked" if "chunked" in flags else "full",
            optimizer="fused_adamw" if "fused" in flags else "adamw",
            grad_accum_steps=2 if "accum2" in flags else 1,
        )
        stage = 2 if "zero2" in flags else 1 if "zero1" in flags else 0
        deepspeed = DeepSpeedConfig(precision=setup.precision, stage=stage)
        cfg = TrainConfig(data=data, adapter=adapter_cfg, trainer=trainer, deepspeed=deepspeed)
        method = ADAPTERS[adapter]
        model = method.inject(base, adapter_cfg)
        self.runtime = method.runtime(model, adapter_cfg)
        if "ckpt" in flags:
            enable_gradient_checkpointing(model, self.runtime.recomputation)
        if "compile" in flags:
            compile_blocks(model)
        self.engine = build_engine(model, cfg, world_size=1)
        self.tasks = load_tasks(data, tokenizer, seed=0)
        self.runtime.prepare(self.engine.module, self.tasks, tokenizer.pad_token_id, 0)
        probabilities = mixing_probabilities([len(t.train) for t in self.tasks], data)
        self.stream = MixedBatches(
            self.tasks, probabilities, setup.batch, tokenizer.pad_token_id, 0, pack_to=data.max_seq_len
        )
        self.weights = torch.ones(len(self.tasks), device=self.engine.device)
        self.token_losses = CROSS_ENTROPY[trainer.cross_entropy]

    def step(self) -> dict[str, torch.Tensor]:
        return self.train_on(self.next_batches())

    def next_batches(self) -> StepBatches:
        """The step's micro-batches, on the host, as the training loop hands them over."""
        micro_batches = [self.stream.next() for _ in range(self.engine.gradient_accumulation_steps())]
        return step_batches(micro_batches, len(self.tasks))

    def train_on(self, batches: StepBatches) -> dict[str, torch.Tensor]:
        result = optimizer_step(self.engine, batches, self.weights, self.runtime, lambda w, c: w, self.token_losses)
        if not result.applied:
            raise RuntimeError("a benchmark step was skipped (non-finite loss or gradient)")
        return batches.micro_batches[0]

    def optimizer_name(self) -> str:
        return self.engine.optimizer_name()


Runner = Plain | Mtft  # what mtft-bench times and mtft-bench ops counts: next_batches, train_on, optimizer_name


def prebuilt_batches(data: DataConfig, tokenizer, batch: int, count: int, device) -> list[dict[str, torch.Tensor]]:
    tasks = load_tasks(data, tokenizer, seed=0)
    probabilities = mixing_probabilities([len(t.train) for t in tasks], data)
    stream = MixedBatches(tasks, probabilities, batch, tokenizer.pad_token_id, 0, pack_to=data.max_seq_len)
    return [{k: v.to(device) for k, v in stream.next().items()} for _ in range(count)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available() and not args.dry_run
    device = torch.device("cuda" if cuda else "cpu")
    shape = SHAPES["tiny" if args.dry_run else args.shape]
    precision = "bf16" if cuda else "fp32"
    attention = resolve_attention(args.attention)
    setup = Setup(shape, precision, device, args.batch, args.seq, attention)
    init_distributed()
    tokenizer = build_byte_tokenizer()
    workdir = Path(tempfile.mkdtemp(prefix="mtft-bench-gpu-"))
    data = DataConfig(
        tasks=synthetic_tasks(workdir, args.seq), packing=True, max_seq_len=args.seq, overlong="truncate"
    )

    if any("compile" in name for name in args.configs):  # each compiles the same layer code with another adapter
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    runners: dict[str, Runner] = {}
    resident: dict[str, int] = {}
    failures: dict[str, str] = {}
    for name in args.configs:
        before = torch.cuda.memory_allocated() if cuda else 0
        print(f"building {name} ...", flush=True)
        try:
            if name == "plain":
                runners[name] = Plain(setup, prebuilt_batches(data, tokenizer, args.batch, 8, device))
            else:
                runners[name] = Mtft(setup, name, data, tokenizer)
        except Exception as err:  # one configuration's failure is reported, the others still measured
            failures[name] = _failed(name, "building", err)
            continue
        resident[name] = (torch.cuda.memory_allocated() if cuda else 0) - before

    measured = {name: Measured(resident=resident[name]) for name in runners}
    for round_ in range(args.rounds):
        for name, runner in list(runners.items()):
            try:
                measure(runner, measured[name], device, args.steps, args.warmup if round_ == 0 else 0)
            except Exception as err:
                failures[name] = _failed(name, "training", err)
                del runners[name], measured[name]
                if cuda:
                    torch.cuda.empty_cache()
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
        report = gpu_report.report(args, setup, runners, measured, failures)
        if args.out:  # after every round: a run cut short still leaves what it measured
            args.out.write_text(json.dumps(report, indent=2))
    if args.profile:
        args.profile.write_text("".join(_profile(name, runner, device) for name, runner in runners.items()))
        print(f"profiles written to {args.profile}", flush=True)
    return report


@dataclass
class Measured:
    resident: int  # bytes of GPU memory the configuration holds between steps (weights, optimizer state)
    times: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    attended: list[int] = field(default_factory=list)
    transient: int = 0  # the most GPU memory its steps allocated on top
    warmup_seconds: float = 0.0


def measure(runner: Runner, into: Measured, device: torch.device, steps: int, warmup: int) -> None:
    """`warmup` untimed steps (compilation, allocator, autotuning), then `steps` timed ones."""
    start = time.perf_counter()
    for _ in range(warmup):
        runner.step()
    _sync(device)
    into.warmup_seconds += time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_memory = torch.cuda.memory_allocated()
    for _ in range(steps):
        _sync(device)
        start = time.perf_counter()
        batch = runner.step()
        _sync(device)
        into.times.append(time.perf_counter() - start)
        into.tokens.append(int((batch["task_ids"] >= 0).sum()))
        into.attended.append(attended_positions(batch))
    if device.type == "cuda":
        into.transient = max(into.transient, torch.cuda.max_memory_allocated() - base_memory)


def _failed(name: str, stage: str, err: Exception) -> str:
    traceback.print_exc()
    message = f"{stage}: {type(err).__name__}: {err}".splitlines()[0][:500]
    print(f"{name}: FAILED {message}", flush=True)
    return message


def _profile(name: str, runner: Runner, device: torch.device) -> str:
    """One step under the profiler: kernels launched, host-device syncs, and the ops that took the most time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        runner.step()
        _sync(device)
    events = prof.events()
    kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    syncs = sum(1 for e in events if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync"))
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=70)
    return f"== {name}: {kernels} kernels, {syncs} synchronising calls or copies in one step ==\n{table}\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mtft-bench gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=[s for s in SHAPES if s != "tiny"], default="0.5b")
    parser.add_argument(
        "--configs",
        default=",".join(["plain", *compared_adapters(LORA_RANK, ALPHA)]),
        help=f"comma-separated: plain, or {'|'.join(compared_adapters(LORA_RANK, ALPHA))} [+{' +'.join(FLAGS)}]",
    )
    parser.add_argument("--attention", default="auto", help="auto | sdpa | flash_attention_2 | eager | ...")
    parser.add_argument("--batch", type=int, default=4, help="packed rows per micro-batch")
    parser.add_argument("--seq", type=int, default=2048, help="tokens per packed row")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration before round 1")
    parser.add_argument("--dry-run", action="store_true", help="a tiny shape in fp32: the code path, for CI")
    parser.add_argument("--out", type=Path, help="write the report as JSON here")
    parser.add_argument("--profile", type=Path, help="profile one step of each configuration; tables to this file")
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if min(args.rounds, args.steps, args.batch, args.seq) < 1 or args.warmup < 0:
        parser.error("--rounds, --steps, --batch and --seq must be at least 1, --warmup at least 0")
    if args.dry_run:
        args.seq, args.batch, args.rounds, args.steps, args.warmup = min(args.seq, 256), 2, 1, 1, 1
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("mtft-bench gpu: error: no CUDA device here; --dry-run runs the code path on a CPU", file=sys.stderr)
        return 2
    args.command = shlex.join(["mtft-bench", "gpu", *argv])
    report = run(args)
    gpu_report.print_table(report)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        print(f"written to {args.out}")
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
