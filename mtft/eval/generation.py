"""Sample generations: a few validation prompts per task, decoded greedily beside their references, so a person
can see what each task's numbers mean."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from mtft.adapters.intuition import set_instance_prior
from mtft.data.tasks import Sample, TaskData
from mtft.data.tokenize import IGNORE

COLUMNS = ["task", "prompt", "reference", "output"]


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


@torch.no_grad()
def sample_generations(
    model, tasks: list[TaskData], tokenizer: PreTrainedTokenizerBase, per_task: int, max_new_tokens: int, synced: bool
) -> list[list[str]]:
    """Rows of COLUMNS. Collective under ZeRO-3 (`synced`): every rank generates the same prompts, in step."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    for task in tasks:
        for sample in task.val[:per_task]:
            if (turn := first_turn(sample)) is None:
                continue
            prompt, reference = turn
            if sample.prior is not None:  # MoR1E's instance prior: one per sample, broadcast over its tokens
                set_instance_prior(model, torch.tensor(sample.prior, device=device)[None, None])
            ids = torch.tensor([prompt], device=device)
            output = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                eos_token_id=sorted({tokenizer.eos_token_id, reference[-1]}),  # the reference's own turn end
                pad_token_id=tokenizer.pad_token_id,
                synced_gpus=synced,
            )[0, len(prompt) :]
            rows.append(
                [task.name, *(tokenizer.decode(t, skip_special_tokens=True) for t in (prompt, reference, output))]
            )
    model.train(was_training)
    return rows


@torch.no_grad()
def generate_batch(
    model,
    prompts: list[list[int]],
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
    stop_ids: list[int],
    do_sample: bool = False,
    temperature: float = 1.0,
    priors: list[list[float]] | None = None,
) -> list[list[int]]:
    """Each prompt's continuation (token ids, up to the first stop token, which is dropped), decoded together:
    left-padded so every prompt ends where generation starts, with the KV cache. `priors`: MoR1E's per-sample
    routing prior, one per prompt."""
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    if priors is not None:
        set_instance_prior(model, torch.tensor(priors, device=device)[:, None, :])
    sampling = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        max_new_tokens=max_new_tokens,
        use_cache=True,
        eos_token_id=stop_ids,
        pad_token_id=pad,
        **sampling,
    )[:, width:]
    continuations = []
    for row in output.tolist():
        end = next((i for i, token in enumerate(row) if token in stop_ids), len(row))
        continuations.append(row[:end])
    return continuations
