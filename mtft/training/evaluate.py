"""Evaluating a trained checkpoint per task: validation loss and perplexity, and generation metrics on the
validation prompts. `mtft-eval` (cli/eval.py) is the command line over `evaluate`.

The data is the run's own (its config.yaml, the same seed, so the same validation split) unless another data
config is given. Each task's validation samples are split into prompt and reference at the first answer (as
the sample generations during training are); outputs are generated in batches, left-padded, greedy by default,
and stop at the chat turn's end.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm

from mtft.adapters import ADAPTERS, load_adapter
from mtft.adapters.base import ADAPTER_CONFIG_FILE
from mtft.config.convert import from_dict
from mtft.config.train import TrainConfig, build_train_config
from mtft.data.batches import validation_batches, validation_rounds
from mtft.data.config import DataConfig
from mtft.data.tasks import TaskData, load_tasks
from mtft.errors import ConfigError
from mtft.eval.generation import metric_means, scored_generations
from mtft.models import load_model, load_tokenizer
from mtft.training.engine import resolve_precision
from mtft.training.validation import validation_losses


@dataclass
class EvalSettings:
    batch_size: int = 16
    max_new_tokens: int = 64
    max_samples: int | None = None  # per task, the first N validation samples; None: all of them
    do_sample: bool = False
    temperature: float = 1.0
    seed: int = 0


def evaluate(
    checkpoint: Path, out: Path, settings: EvalSettings, config: Path | None = None, data: Path | None = None
) -> dict[str, Any]:
    """Evaluate `checkpoint` (RUN/checkpoint-N, or a directory `mtft-export` wrote together with `config`, the
    run's config.yaml) on the run's data, or on `data` (a data config YAML); write eval.json and
    predictions.jsonl to `out`. Returns eval.json's content."""
    adapter_dir, cfg = _adapter_and_run_config(checkpoint, config)
    if data is not None:
        cfg.data = from_dict(DataConfig, _yaml(data, "data"), "data")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    tokenizer = load_tokenizer(cfg.model)
    saved = json.loads((adapter_dir / ADAPTER_CONFIG_FILE).read_text())
    adapter_cfg = ADAPTERS[saved["name"]].config(**saved)
    model = load_adapter(load_model(cfg.model, tokenizer), adapter_dir)
    runtime = ADAPTERS[adapter_cfg.name].runtime(model, adapter_cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if resolve_precision(cfg.deepspeed.precision) == "bf16" else torch.float32
    model = model.to(device, dtype).eval()
    tasks = load_tasks(cfg.data, tokenizer, cfg.trainer.seed)
    # only the validation samples are evaluated: only they need routing inputs (e.g. MoR1E's prior)
    tasks = [TaskData(t.name, [], t.val[: settings.max_samples or None], t.report) for t in tasks]
    runtime.prepare_inference(model, tasks, tokenizer.pad_token_id)

    names = [task.name for task in tasks]
    batches = validation_batches(tasks, settings.batch_size, tokenizer.pad_token_id, 0, 1)
    count = sum(validation_rounds(task, settings.batch_size, 1) for task in tasks)
    losses = validation_losses(model, tqdm(batches, total=count, desc="loss", leave=False), names, runtime)

    predictions = scored_generations(
        model,
        tasks,
        cfg.data.tasks,
        tokenizer,
        settings.max_samples,
        settings.batch_size,
        settings.max_new_tokens,
        settings.do_sample,
        settings.temperature,
        progress=True,
    )
    with (out / "predictions.jsonl").open("w") as f:
        for row in predictions:
            f.write(json.dumps(row) + "\n")
    results = {}
    for task in tasks:
        results[task.name] = {
            "val_loss": losses.get(task.name, math.nan),
            "perplexity": math.exp(losses[task.name]) if task.name in losses else math.nan,
            "val_samples": len(task.val),
            "generated": sum(r["task"] == task.name for r in predictions),
            **metric_means(predictions, task.name),
        }
    report = {
        "checkpoint": str(checkpoint),
        "adapter": adapter_cfg.name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "device": str(device),
        "settings": vars(settings),
        "tasks": results,
    }
    (out / "eval.json").write_text(json.dumps(report, indent=2))
    return report


def _adapter_and_run_config(checkpoint: Path, config: Path | None) -> tuple[Path, TrainConfig]:
    """(the adapter directory, the run's config) for a checkpoint or an exported adapter."""
    if (checkpoint / "adapter" / ADAPTER_CONFIG_FILE).is_file():
        adapter_dir, default_config = checkpoint / "adapter", checkpoint.parent / "config.yaml"
    elif (checkpoint / ADAPTER_CONFIG_FILE).is_file():
        adapter_dir, default_config = checkpoint, None
    else:
        raise ConfigError("checkpoint", f"{checkpoint}: neither an mtft checkpoint nor an exported adapter")
    config = config or default_config
    if config is None or not config.is_file():
        raise ConfigError("config", f"{config or checkpoint}: no run config.yaml; pass config=RUN/config.yaml")
    return adapter_dir, build_train_config(_yaml(config, "config"))


def _yaml(path: Path, key: str) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(key, f"cannot read {path}: {err}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(key, f"{path}: expected a mapping")
    return loaded


def print_table(report: dict[str, Any]) -> None:
    fixed = {"val_loss", "perplexity", "val_samples", "generated"}
    metrics = sorted({k for r in report["tasks"].values() for k in r} - fixed)
    print(f"\n{'task':<16}{'val loss':>10}{'ppl':>10}{'samples':>9}" + "".join(f"{m:>13}" for m in metrics))
    for name, r in report["tasks"].items():
        print(f"{name:<16}{r['val_loss']:>10.4f}{r['perplexity']:>10.3f}{r['generated']:>9}", end="")
        print("".join(f"{r[m]:>13.4f}" if m in r else f"{'-':>13}" for m in metrics))
