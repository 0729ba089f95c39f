"""The peer baseline for mtft's real-model experiments: TRL's SFTTrainer fine-tunes a model with LoRA on mtft's
multi-task data, with the loss on the completions only, as a TRL user would write it.

It runs in its own environment (scripts/experiments/peers/setup_trl.sh builds .venv-trl) and does not import mtft,
so nothing of mtft's data path, loop or kernels reaches the baseline. It reads the data config that
scripts/experiments/real_suite.py writes (`tasks:` with `name`, `path`, `format: prompt_response`), concatenates
the tasks' training sets and shuffles them with the seed (the tasks have equal sizes: uniform mixing).

The adapter it saves (OUT/adapter) is a plain PEFT directory that mtft scores:
    mtft-eval model=DIR gguf_file=F adapter=OUT/adapter data=FILE.yaml out=EVALDIR

Usage (with .venv-trl's python):
    trl_sft.py --model-dir DIR --gguf-file F --data FILE.yaml --out OUT --steps N --batch B --lr LR ...
Writes OUT/adapter/ and OUT/trl_summary.json (versions, settings, training seconds, tokens seen, per-step losses).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import yaml
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import SFTConfig, SFTTrainer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="directory holding the model (and the GGUF file)")
    parser.add_argument("--gguf-file", default=None, help="a GGUF file in --model-dir, loaded dequantized to fp32")
    parser.add_argument("--data", required=True, help="mtft data YAML (tasks: name, path, format: prompt_response)")
    parser.add_argument("--out", required=True, help="output directory: adapter/ and trl_summary.json")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps (max_steps)")
    parser.add_argument("--batch", type=int, default=8, help="per-device train batch size")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--scheduler", default="cosine", help="transformers lr_scheduler_type")
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--target-modules", default="all-linear", help="'all-linear' or a comma-separated list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seq-len", type=int, default=None, help="default: the data YAML's max_seq_len, or 1024")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32", help="bf16: autocast, fp32 weights")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    parser.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute activations (TRL's SFTConfig turns it on by default; off here, as mtft's trainer default)",
    )
    return parser.parse_args(argv)


def read_tasks(data_yaml: Path) -> tuple[dict[str, list[dict]], int | None]:
    """{task name: its training records in TRL's conversational prompt/completion form}, and the YAML's
    max_seq_len. Paths are taken as mtft takes them: as written, relative to the working directory."""
    suite = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    tasks = {}
    for task in suite["tasks"]:
        if task.get("format", "prompt_response") != "prompt_response":
            sys.exit(f"trl_sft: task {task['name']}: format {task['format']!r}; only prompt_response is read here")
        tasks[task["name"]] = [to_prompt_completion(r, task["path"]) for r in read_jsonl(Path(task["path"]))]
    return tasks, suite.get("max_seq_len")


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def to_prompt_completion(record: dict, where: str) -> dict:
    """mtft's prompt_response format (mtft/data/formats.py): `prompt`, `response` (or `completion`), an optional
    `system`. A system message, when given, leads the prompt, as mtft puts it first in the conversation."""
    answer_key = "response" if "response" in record else "completion"
    if not isinstance(record.get("prompt"), str) or not isinstance(record.get(answer_key), str):
        sys.exit(f"trl_sft: {where}: a record lacks a string 'prompt' or 'response': {record}")
    system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    return {
        "prompt": [*system, {"role": "user", "content": record["prompt"]}],
        "completion": [{"role": "assistant", "content": record[answer_key]}],
    }


def mixed_dataset(tasks: dict[str, list[dict]], seed: int) -> Dataset:
    rows = [row for records in tasks.values() for row in records]
    random.Random(seed).shuffle(rows)
    return Dataset.from_list(rows)


def load_model(args: argparse.Namespace):
    """The GGUF checkpoint dequantized to fp32. transformers keeps the GGUF quantizer on the model although the
    weights are plain tensors by then; it would make the model look quantized to PEFT and refuse save_pretrained."""
    extra = {"gguf_file": args.gguf_file} if args.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir, **extra)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, **extra)
    if args.gguf_file:
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return tokenizer, model


def count_overlong(dataset: Dataset, tokenizer, max_len: int) -> int:
    """Samples that TRL will cut to max_len (truncation keep_start); mtft drops them by default (overlong: drop)."""
    return sum(
        len(tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)) > max_len
        for row in dataset
    )


class Clock(TrainerCallback):
    """Wall seconds of the training loop alone: model loading and TRL's dataset preparation come before it."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start


class CountingSFTTrainer(SFTTrainer):
    """SFTTrainer that adds up the attention-mask tokens of every batch it trains on (padding excluded), counted
    where the batch is consumed, so a batch the dataloader fetched ahead but never trained on is not counted."""

    tokens_seen = 0

    def training_step(self, model, inputs, *args, **kwargs):
        self.tokens_seen += int(inputs["attention_mask"].sum())
        return super().training_step(model, inputs, *args, **kwargs)


def sft_config(args: argparse.Namespace, max_len: int) -> SFTConfig:
    bf16 = args.precision == "bf16"
    return SFTConfig(
        output_dir=str(Path(args.out) / "trainer"),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type=args.scheduler,
        warmup_steps=args.warmup_steps,
        max_grad_norm=args.max_grad_norm,
        weight_decay=args.weight_decay,
        # prompt/completion data: TRL masks the prompt (labels -100) and trains on the completion, which is the
        # assistant turn as the chat template renders it, <|im_end|> and the newline after it included
        completion_only_loss=True,
        assistant_only_loss=False,
        packing=False,
        max_length=max_len,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=bf16,  # autocast to bf16 around the forward; weights and optimizer state stay fp32
        fp16=False,
        # transformers refuses bf16 without a bf16 GPU unless told to run on the CPU
        use_cpu=not torch.cuda.is_available(),
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",  # transformers' own count, a cross-check of ours
        disable_tqdm=True,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks, yaml_max_len = read_tasks(Path(args.data))
    max_len = args.max_seq_len or yaml_max_len or 1024
    train = mixed_dataset(tasks, args.seed)
    tokenizer, model = load_model(args)
    overlong = count_overlong(train, tokenizer, max_len)

    targets = args.target_modules if args.target_modules == "all-linear" else args.target_modules.split(",")
    lora = LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    clock = Clock()
    config = sft_config(args, max_len)
    trainer = CountingSFTTrainer(
        model=model,
        args=config,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[clock],
    )
    trainer.train()

    # mtft (and PEFT) load the base model themselves; the base path is recorded for people, not used to load
    trainer.model.peft_config["default"].base_model_name_or_path = str(Path(args.model_dir).resolve())
    trainer.model.save_pretrained(out / "adapter")
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "versions": {p: importlib.metadata.version(p) for p in ("trl", "transformers", "peft", "torch", "accelerate")},
        "model": {"dir": args.model_dir, "gguf_file": args.gguf_file},
        "data": args.data,
        "tasks": {name: len(records) for name, records in tasks.items()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("model_dir", "gguf_file", "data", "out")},
        "max_length": max_len,
        "samples_over_max_length": overlong,
        "optim": str(config.optim.value if hasattr(config.optim, "value") else config.optim),
        "threads": torch.get_num_threads(),
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "steps": trainer.state.global_step,
        "train_seconds": clock.seconds,
        "train_tokens": trainer.tokens_seen,
        "train_tokens_transformers": trainer.state.num_input_tokens_seen,
        "tokens_per_second": trainer.tokens_seen / clock.seconds,
        "losses": losses,
        "final_loss": losses[-1] if losses else math.nan,
    }
    (out / "trl_summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"trl_sft: {summary['steps']} steps in {clock.seconds:.1f}s, {trainer.tokens_seen} tokens "
        f"({summary['tokens_per_second']:.0f}/s), final loss {summary['final_loss']:.4f}; wrote {out}/adapter, "
        f"{out}/trl_summary.json"
    )


if __name__ == "__main__":
    main()
