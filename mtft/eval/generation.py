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
