"""Per-token cross-entropy without the full logits: `trainer.cross_entropy=chunked`.

Why: at a 151,936-token vocabulary one packed micro-batch of 4 × 2048 tokens has 1.2 G logits, 2.5 GB in bf16
and 5 GB more once upcast for the loss, more than the rest of a 0.5B model's activations together. The chunked
loss runs the output head over a few thousand tokens at a time and keeps only what the backward needs.

How (the idea of Liger's fused linear cross-entropy, in plain torch, and per token): the forward computes each
chunk's logits in fp32, its token losses, and at once the loss's gradient with respect to the chunk's hidden
states, ∂ℓ_t/∂h_t = (softmax_t − onehot_t)·W, which is small (tokens × hidden). The backward only scales those
rows by the incoming per-token gradients: no logits are kept or recomputed. Only where the head itself trains (a
full fine-tune; tied embeddings) does the backward recompute each chunk's logits for the head's gradient.

The per-token losses are the same as `losses.token_losses` (to ~1e-6 in fp32), so per-task sums and the
balanced loss are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtft.data.tokenize import IGNORE
from mtft.training.losses import target_losses
from mtft.training.model_runner import ModelRunner

# (what runs the model, its inputs, next-token targets (B·T,) from losses.next_token_targets) -> losses (B·T,),
# 0 where a target is ignored
TokenLosses = Callable[[ModelRunner, dict[str, torch.Tensor], torch.Tensor], torch.Tensor]

# logits per chunk: 2^28 fp32 values (1 GiB) bound the loss's transient memory whatever the vocabulary
CHUNK_ELEMENTS = 1 << 28


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, bias_V, targets_N, chunk):
        losses = hidden_NH.new_empty(hidden_NH.size(0), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden_NH) if ctx.needs_input_grad[0] else None
        for rows in _chunks(hidden_NH.size(0), chunk):
            losses[rows], grad_logits = _chunk(hidden_NH[rows], weight_VH, bias_V, targets_N[rows])
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits.to(weight_VH.dtype) @ weight_VH).to(hidden_NH.dtype)
        ctx.chunk = chunk
        head_trains = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]  # its gradient needs the logits again
        ctx.save_for_backward(grad_hidden, hidden_NH if head_trains else None, weight_VH, bias_V, targets_N)
        return losses

    @staticmethod
    def backward(ctx, grad_losses_N):
        grad_hidden, hidden_NH, weight_VH, bias_V, targets_N = ctx.saved_tensors
        grad_h = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_h = grad_hidden * grad_losses_N[:, None].to(grad_hidden.dtype)
        if hidden_NH is not None:
            grad_w = torch.zeros_like(weight_VH, dtype=torch.float32)
            grad_b = torch.zeros_like(bias_V, dtype=torch.float32) if bias_V is not None else None
            for rows in _chunks(hidden_NH.size(0), ctx.chunk):
                _, grad_logits = _chunk(hidden_NH[rows], weight_VH, bias_V, targets_N[rows])
                grad_logits *= grad_losses_N[rows, None]
                grad_w += grad_logits.t() @ hidden_NH[rows].float()
                if grad_b is not None:
                    grad_b += grad_logits.sum(0)
            grad_w = grad_w.to(weight_VH.dtype) if ctx.needs_input_grad[1] else None
            grad_b = grad_b.to(bias_V.dtype) if ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None, None


def _chunks(n: int, chunk: int) -> list[slice]:
    return [slice(start, start + chunk) for start in range(0, n, chunk)]


def _chunk(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor):
    """One chunk's (per-token losses, ∂loss/∂logits = softmax − onehot(target)), both fp32, 0 on ignored rows.
    The gradient is computed in place over the logits: one logits-sized buffer per chunk."""
    logits = (hidden @ weight.t()).float()
    if bias is not None:
        logits += bias.float()
    counted = targets != IGNORE
    safe = torch.where(counted, targets, 0)
    lse = torch.logsumexp(logits, dim=-1)
    losses = torch.where(counted, lse - logits.gather(1, safe[:, None]).squeeze(1), 0.0)
    grad = logits.sub_(lse[:, None]).exp_()
    grad.scatter_add_(1, safe[:, None], torch.full_like(lse[:, None], -1.0))
    return losses, grad.mul_(counted[:, None])


def linear_cross_entropy(
    hidden_NH: torch.Tensor, head: nn.Linear, targets_N: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """Per-token cross-entropy of `head(hidden)` against `targets` (0 where IGNORE), chunk by chunk."""
    chunk = chunk or max(1, CHUNK_ELEMENTS // head.weight.size(0))
    return _LinearCrossEntropy.apply(hidden_NH, head.weight, head.bias, targets_N, chunk)


def output_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """(the decoder that yields hidden states, the output head) of a transformers causal LM, through PEFT's
    wrapper. Refuses a model whose logits are more than a Linear of the hidden states (soft-capped or scaled)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    config = getattr(base, "config", None)
    extra = [k for k in ("final_logit_softcapping", "logit_scale", "logits_scaling") if getattr(config, k, None)]
    if not isinstance(head, nn.Linear) or decoder is None or extra:
        why = f"its logits use {', '.join(extra)}" if extra else "it has no decoder and Linear output head"
        raise ValueError(f"trainer.cross_entropy=chunked cannot run on {type(base).__name__}: {why}; use full")
    return decoder, head


def full_token_losses(runner: ModelRunner, inputs: dict[str, torch.Tensor], targets_N: torch.Tensor) -> torch.Tensor:
    """The plain path: the model's full logits, then the loss."""
    return target_losses(runner(**inputs).logits, targets_N)


def chunked_token_losses(
    runner: ModelRunner, inputs: dict[str, torch.Tensor], targets_N: torch.Tensor
) -> torch.Tensor:
    """As `full_token_losses`, without materialising the logits."""
    decoder, head = output_head(runner.module)
    hidden = decoder(**inputs).last_hidden_state
    return linear_cross_entropy(hidden.flatten(0, 1), head, targets_N)


CROSS_ENTROPY: dict[str, TokenLosses] = {"full": full_token_losses, "chunked": chunked_token_losses}
