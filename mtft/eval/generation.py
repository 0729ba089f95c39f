"""Generations on the validation prompts, scored per task: all of them for mtft-eval, a few per task at each
evaluation during training (beside their references, so a person can see what each task's numbers mean)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mtft.adapters import runtime_of
from mtft.data.tasks import Sample, TaskData
from mtft.data.tokenize import IGNORE
from mtft.distributed import gather_lists
from mtft.eval.metrics import DEFAULT_METRICS, METRICS
from mtft.models import eval_mode

COLUMNS = ["task", "prompt", "reference", "output"]
TURN_ENDS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")  # chat templates' end-of-turn tokens


def first_turn(sample: Sample) -> tuple[list[int], list[int]] | None:
    """(prompt, reference): the sample's prompt (Sample.prompt) and the first completion after it; None if there
    is no prompt or no trained completion left (truncated away, or plain text)."""
    prompt = sample.prompt()
    trained = [label != IGNORE for label in sample.labels[len(prompt) :]]
    if not prompt or True not in trained:
        return None
    start = trained.index(True)
    end = trained.index(False, start) if False in trained[start:] else len(trained)
    return prompt, sample.input_ids[len(prompt) + start : len(prompt) + end]


@dataclass(frozen=True)
class Decoding:
    """How prompts are answered: `batch_size` at a time, up to `max_new_tokens` each, greedy or sampled; for
    scored generations, the first `per_task` validation prompts of each task (None: all)."""

    max_new_tokens: int
    batch_size: int = 8
    do_sample: bool = False
    temperature: float = 1.0
    seed: int | None = None  # sampling reseeded per batch from (seed, task, batch): outputs independent of ranks
    per_task: int | None = None
    progress: bool = False  # a bar per task


@dataclass(frozen=True)
class Ranks:
    """Which share of the batches this process generates, and whether each forward is collective (ZeRO-3)."""

    rank: int = 0
    world_size: int = 1
    synced: bool = False


@torch.no_grad()
def scored_generations(
    model,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[TaskData],
    specs: list,
    decoding: Decoding,
    ranks: Ranks = Ranks(),
) -> list[dict[str, Any]]:
    """One row per validation sample with a prompt and an answer (the first `decoding.per_task` of each task):
    task, prompt, reference, output, and the task's metrics (its spec's `metrics`, eval/metrics.py). Used by
    mtft-eval and, with a few samples per task, by training at each evaluation.

    Data-parallel over the ranks: of each task's batches, rank r generates r, r + W, ..., and the rows are
    gathered onto every rank in the one-rank order. The batches are the one-rank batches (same prompts, same
    padding), so the rows are the same as one rank's; sampled outputs are reseeded per batch (`Decoding.seed`).

    Collective under ZeRO-3 (`ranks.synced`): every forward gathers shards from all ranks, so every rank runs the
    same number of generate calls (a rank with no batch left generates a discarded one-prompt batch), and
    `synced_gpus` keeps ranks whose batch finished early stepping until all have."""
    stop = sorted(stop_ids(model, tokenizer))
    mine = []  # (task index, batch index, rows): this rank's batches
    with eval_mode(model):
        for task_index, (task, spec) in enumerate(zip(tasks, specs, strict=True)):
            mine += _my_batches(model, tokenizer, task_index, task, spec, decoding, ranks, stop)
    gathered = gather_lists(mine) if ranks.world_size > 1 else mine
    return [row for *_, rows in sorted(gathered, key=lambda part: part[:2]) for row in rows]


def _my_batches(model, tokenizer, task_index: int, task: TaskData, spec, decoding: Decoding, ranks: Ranks, stop):
    """This rank's generated batches of one task, each as (task index, batch index, scored rows); which batches
    are this rank's, and why a rank may generate a discarded one: `scored_generations`."""
    turns = [(s, t) for s in task.val[: decoding.per_task] if (t := first_turn(s)) is not None]
    size, world_size = decoding.batch_size, ranks.world_size
    chunks = [turns[start : start + size] for start in range(0, len(turns), size)]
    rounds = range(ranks.rank, -(-len(chunks) // world_size) * world_size, world_size)
    mine = []
    for index in tqdm(rounds, desc=task.name, leave=False) if decoding.progress else rounds:
        if index >= len(chunks) and not ranks.synced:
            break
        chunk = chunks[index] if index < len(chunks) else chunks[0][:1]
        if decoding.seed is not None:
            state = np.random.SeedSequence([decoding.seed, task_index, index]).generate_state(1)[0]
            torch.manual_seed(int(state))
        prompts = [prompt for _, (prompt, _) in chunk]
        outputs = generate_batch(model, tokenizer, prompts, stop, decoding, ranks.synced)
        if index < len(chunks):
            mine.append((task_index, index, _scored(chunk, outputs, task.name, spec, tokenizer)))
    return mine


def _scored(chunk: list, outputs: list[list[int]], task: str, spec, tokenizer) -> list[dict[str, Any]]:
    """The chunk's rows: decoded prompt, reference and output, and each of the task's metrics."""
    metrics = spec.metrics or list(DEFAULT_METRICS)
    rows = []
    for (_, (prompt, reference)), output in zip(chunk, outputs, strict=True):
        text = {
            "prompt": tokenizer.decode(prompt, skip_special_tokens=True),
            # the trained span ends with the template's own end of turn, e.g. ChatML's "<|im_end|>\n": not the answer
            "reference": tokenizer.decode(reference, skip_special_tokens=True).strip(),
            "output": tokenizer.decode(output, skip_special_tokens=True),
        }
        scores = {m: METRICS[m](text["output"], text["reference"], spec.answer_pattern) for m in metrics}
        rows.append({"task": task, **text, **scores})
    return rows


def metric_means(rows: list[dict[str, Any]], task: str) -> dict[str, float]:
    """Each metric's mean over `task`'s rows ({} when it has none)."""
    mine = [r for r in rows if r["task"] == task]
    names = [k for k in (mine[0] if mine else {}) if k not in ("task", *COLUMNS)]
    return {m: sum(r[m] for r in mine) / len(mine) for m in names}


def stop_ids(model, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The end of sequence and of a chat turn, whichever of them this tokenizer and model have."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in TURN_ENDS if token in vocab)
    return {i for i in ids if i is not None}


@torch.no_grad()
def generate_batch(
    model,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    stop_ids: list[int],
    decoding: Decoding,
    synced: bool = False,
) -> list[list[int]]:
    """Each prompt's continuation (token ids, up to the first stop token, which is dropped), decoded together:
    left-padded so every prompt ends where generation starts, with the KV cache. The adapter's runtime, carried by
    the model, sees the prompts first (`before_generate`: routing inputs computed from each prompt)."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    runtime_of(model).before_generate({"input_ids": input_ids, "attention_mask": attention_mask})
    sampling = {"do_sample": True, "temperature": decoding.temperature} if decoding.do_sample else {"do_sample": False}
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=decoding.max_new_tokens,
        use_cache=True,
        eos_token_id=stop_ids,
        pad_token_id=pad,
        synced_gpus=synced,
        **sampling,
    )[:, width:]
    continuations = []
    for row in output.tolist():
        end = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
        continuations.append(row[:end])
    return continuations
