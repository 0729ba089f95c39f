"""`mtft-bench gpu-smoke`: every adapter trained ~30 real steps, bf16 and packed, on a Qwen2.5-0.5B-shaped model
with random weights, each a real `python -m mtft.cli.train` run; checks that no run failed silently.

Why: CPU tests cannot see what only goes wrong on a GPU. MoLoRA's gradients were NaN at every bf16 step on an
H100 with exactly this setup, and DeepSpeed skipped every step without a word (issue 11): the loss was logged,
but nothing trained. So each run must exit 0, its loss must fall (mean of the last 5 logged losses below the
first 5), no logged loss may be NaN, no step may be skipped (`train/skipped_steps`, where the loop reports it),
and the learning rate must be above 0 after warm-up (DeepSpeed advances the schedule only on a step it applied,
so a run that skipped everything stays at the warm-up's lr of 0). The table beside the checks gives each
adapter's tokens/s, MFU, peak GPU memory and step time over LoRA's, measured where users run.

The model is built locally (no download), seed 0, with mtft's byte tokenizer, and loaded back by every run as
`model=hf model.name_or_path=DIR`. An existing `--model-dir` is used as it is, e.g. a real checkpoint.
`--tiny` takes the same path on a CPU at a tiny shape in fp32, for the tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mtft
from mtft.adapters import ADAPTERS, adapter_variants, baseline_adapter

QWEN_0_5B = dict(
    vocab_size=151936,
    hidden_size=896,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    intermediate_size=4864,
    tie_word_embeddings=True,
    rope_theta=1e6,
)
TINY = dict(  # vocab_size: the byte tokenizer's own
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    tie_word_embeddings=True,
    rope_theta=1e6,
)

# run name -> its adapter overrides: every registered adapter at its defaults and its declared variants (MoR1E
# with the prior, dense), the baseline (LoRA) first: the step-time ratios' denominator
RUNS: dict[str, list[str]] = {
    run: [f"adapter={name}", *(f"adapter.{key}={value}" for key, value in settings.items())]
    for run, (name, settings) in adapter_variants(runs=True).items()
}
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Profile:
    """Everything that differs between the GPU smoke and its CPU stand-in; the code path is the same."""

    shape: dict[str, Any]
    precision: str
    max_seq_len: int
    micro_batch_size: int
    steps: int
    warmup_steps: int
    lr: float
    # A full fine-tune moves every weight: a tenth of the adapters' lr, as is usual for full fine-tuning.
    lr_full_model: float | None = None  # None: `lr`


GPU = Profile(QWEN_0_5B, "bf16", 2048, 4, steps=30, warmup_steps=5, lr=1e-3, lr_full_model=1e-4)
CPU_TINY = Profile(TINY, "fp32", 256, 4, steps=10, warmup_steps=2, lr=3e-3, lr_full_model=1e-3)


def build_model(model_dir: Path, shape: dict[str, Any]) -> None:
    """A Qwen2 of `shape` with random weights (seed 0) and mtft's byte tokenizer, saved as a HF model directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mtft.models import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    config = Qwen2Config(
        **{"vocab_size": len(tokenizer), **shape},
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        use_cache=False,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def _lr(profile: Profile, run: str) -> float:
    full_model = ADAPTERS[adapter_variants(runs=True)[run][0]].config.is_full_model
    return profile.lr_full_model if full_model and profile.lr_full_model is not None else profile.lr


def train_overrides(profile: Profile, name: str, model_dir: Path, output_dir: Path, steps: int) -> list[str]:
    """A constant lr after warm-up keeps `lr > 0` true at every later step of a healthy run (cosine ends at 0)."""
    return [
        *RUNS[name],
        "model=hf",
        f"model.name_or_path={model_dir}",
        "data.packing=true",
        f"data.max_seq_len={profile.max_seq_len}",
        f"trainer.micro_batch_size={profile.micro_batch_size}",
        f"deepspeed.precision={profile.precision}",
        f"trainer.max_steps={steps}",
        f"trainer.eval_steps={steps}",
        "trainer.logging_steps=1",
        "trainer.eval_generations=0",
        f"trainer.lr={_lr(profile, name)}",
        f"trainer.warmup_steps={profile.warmup_steps}",
        "trainer.lr_scheduler=constant_with_warmup",
        "logger=none",
        "logger.progress=lines",
        f"trainer.output_dir={output_dir}",
    ]


def check_run(run_dir: Path, returncode: int, stderr_tail: str, warmup_steps: int, steps: int) -> dict[str, Any]:
    """The run's measures and its `problems` (empty: it passed)."""
    result: dict[str, Any] = {"returncode": returncode, "problems": []}
    problems = result["problems"]
    if returncode != 0:
        problems.append(f"exited {returncode}; stderr ends:\n{stderr_tail}")
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    if not records:
        problems.append(f"no metrics records in {metrics}")
        return result
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}

    losses = [r.get("loss", math.nan) for r in records]
    bad = [r["step"] for r, loss in zip(records, losses, strict=True) if not math.isfinite(loss)]
    if bad:
        problems.append(f"loss not finite at steps {bad}")
    window = max(1, min(5, len(losses) // 2))
    first, last = statistics.fmean(losses[:window]), statistics.fmean(losses[-window:])
    if not last < first:  # also false for NaN
        problems.append(f"loss did not fall: mean of the last {window} {last:.4f} >= first {window} {first:.4f}")

    reported = [v for v in (records[-1].get("train/skipped_steps"), summary.get("skipped_steps")) if v is not None]
    skipped = max(reported, default=0)
    if skipped:
        problems.append(f"{skipped} optimizer step(s) skipped")
    zero_lr = [r["step"] for r in records if r["step"] >= warmup_steps and not r["lr"] > 0]
    if zero_lr:
        problems.append(f"lr is 0 after warm-up at steps {zero_lr[:10]}: DeepSpeed skipped the steps")
    if returncode == 0 and summary.get("steps") != steps:
        problems.append(f"ran {summary.get('steps')} of {steps} steps")

    measured = records[min(3, len(records) // 2) :]  # the first steps pay for warm-up (allocator, kernels)
    tokens_per_second = statistics.median(r["tokens_per_second"] for r in measured)
    mfu = [r["throughput/mfu"] for r in measured if "throughput/mfu" in r]
    gpu_gb = [r["memory/peak_gpu_gb"] for r in records if "memory/peak_gpu_gb" in r]
    tokens_per_step = summary["tokens"] / summary["steps"] if summary.get("steps") else None
    result.update(
        steps_logged=len(records),
        first_loss=losses[0],
        last_loss=losses[-1],
        first_loss_mean=first,
        last_loss_mean=last,
        skipped_steps=skipped,
        skipped_steps_reported=bool(reported),
        tokens_per_second=tokens_per_second,
        mfu=statistics.median(mfu) if mfu else None,
        peak_gpu_gb=max(gpu_gb) if gpu_gb else None,
        step_seconds=tokens_per_step / tokens_per_second if tokens_per_step and tokens_per_second else None,
        trainable_parameters=summary.get("trainable_parameters"),
    )
    return result


def run_one(name: str, overrides: list[str], log_dir: Path, timeout: float) -> tuple[int, str, float]:
    """`python -m mtft.cli.train` in its own process (its own process group and CUDA context, as a user runs it)."""
    root = str(Path(mtft.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    stdout, stderr = log_dir / f"{name}.log", log_dir / f"{name}.stderr.log"
    start = time.perf_counter()
    with stdout.open("w") as out, stderr.open("w") as err:
        try:
            code = subprocess.run(
                [sys.executable, "-m", "mtft.cli.train", *overrides], stdout=out, stderr=err, env=env, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = 124
    tail = "\n".join(stderr.read_text(errors="replace").splitlines()[-20:])
    return code, tail, time.perf_counter() - start


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict[str, dict[str, Any]], ratios: dict[str, float]) -> None:
    baseline = baseline_adapter()
    print(f"\n{'run':<28}{'tokens/s':>11}{'MFU':>7}{'peak GPU GB':>13}{'loss first -> last':>21}", end="")
    print(f"{'skipped':>9}{'step / ' + baseline:>13}  result")
    for name, r in results.items():
        loss = f"{_fmt(r.get('first_loss'), '.3f')} -> {_fmt(r.get('last_loss'), '.3f')}"
        skipped = str(r["skipped_steps"]) if r.get("skipped_steps_reported") else f"{r.get('skipped_steps', '-')}*"
        ratio = 1.0 if name == baseline and "step_seconds" in r else ratios.get(f"{name}_step_time_over_{baseline}")
        print(f"{name:<28}{_fmt(r.get('tokens_per_second'), ',.0f'):>11}{_fmt(r.get('mfu'), '.1%'):>7}", end="")
        print(f"{_fmt(r.get('peak_gpu_gb'), '.2f'):>13}{loss:>21}{skipped:>9}{_fmt(ratio, '.2f'):>13}", end="")
        print(f"  {'pass' if not r['problems'] else 'FAIL'}")
    if any(not r.get("skipped_steps_reported", True) for r in results.values()):
        print("* the run reports no train/skipped_steps; its lr and losses were checked instead")
    for name, r in results.items():
        for problem in r["problems"]:
            print(f"{name}: {problem}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mtft-bench gpu-smoke", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="smoke directory (default runs/gpu-smoke-<time>): runs, logs, JSON")
    parser.add_argument(
        "--model-dir", type=Path, help="the model directory; built there if absent (default OUT/model)"
    )
    parser.add_argument(
        "--steps", type=int, help=f"optimizer steps per run (default {GPU.steps}, tiny {CPU_TINY.steps})"
    )
    parser.add_argument("--adapters", default=",".join(RUNS), help=f"comma-separated runs out of {','.join(RUNS)}")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape in fp32 on whatever device: for CPU tests")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run before it counts as failed")
    args = parser.parse_args(argv)
    args.runs = [n.strip() for n in args.adapters.split(",") if n.strip()]
    unknown = [n for n in args.runs if n not in RUNS]
    if unknown or not args.runs:
        parser.error(f"--adapters: unknown run(s) {unknown}; choose from {', '.join(RUNS)}")
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be at least 2 (the loss check compares the first and last logged steps)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when every run passed, 1 when any failed, 2 when the smoke cannot run here."""
    import torch

    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    profile = CPU_TINY if args.tiny else GPU
    if not args.tiny and not torch.cuda.is_available():
        message = "no CUDA device on this machine; the GPU smoke needs one (--tiny runs its small CPU version)"
        print(f"mtft-bench gpu-smoke: error: {message}", file=sys.stderr)
        return 2
    steps = args.steps or profile.steps
    out = args.out or Path("runs") / time.strftime("gpu-smoke-%Y%m%d-%H%M%S")
    taken = [n for n in args.runs if (out / "runs" / n).exists()]
    if taken:
        print(f"mtft-bench gpu-smoke: error: {out}/runs already holds {taken}; pick a new --out", file=sys.stderr)
        return 2
    (out / "logs").mkdir(parents=True, exist_ok=True)
    model_dir = args.model_dir or out / "model"
    if (model_dir / "config.json").is_file():
        print(f"model: using {model_dir} as it is")
    else:
        print(f"model: building {'a tiny Qwen2' if args.tiny else 'a Qwen2.5-0.5B-shaped model'} in {model_dir}")
        build_model(model_dir, profile.shape)

    results: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(args.runs, 1):
        run_dir = out / "runs" / name
        overrides = train_overrides(profile, name, model_dir.resolve(), run_dir.resolve(), steps)
        print(f"[{i}/{len(args.runs)}] {name}: python -m mtft.cli.train {' '.join(overrides)}", flush=True)
        code, tail, seconds = run_one(name, overrides, out / "logs", args.timeout)
        results[name] = check_run(run_dir, code, tail, profile.warmup_steps, steps) | {"overrides": overrides}
        results[name]["wall_seconds"] = seconds
        print(f"    {'pass' if not results[name]['problems'] else 'FAIL'} in {seconds:.0f} s", flush=True)

    baseline = baseline_adapter()
    base = results.get(baseline, {}).get("step_seconds")
    ratios = {
        f"{name}_step_time_over_{baseline}": r["step_seconds"] / base
        for name, r in results.items()
        if name != baseline and base and r.get("step_seconds")
    }
    print_table(results, ratios)
    report = {
        "suite": "gpu-smoke",
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "command": shlex.join(["mtft-bench", "gpu-smoke", *argv]),
        "model_dir": str(model_dir),
        "profile": asdict(profile) | {"steps": steps},
        "results": results,
        "ratios": ratios,
        "passed": all(not r["problems"] for r in results.values()),
    }
    (out / "gpu_smoke.json").write_text(json.dumps(report, indent=2))
    print(f"\n{'PASSED' if report['passed'] else 'FAILED'}; written to {out / 'gpu_smoke.json'}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
