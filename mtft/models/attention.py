"""Attention: which implementation a model runs (chosen once, at load), and the mask built for sdpa and eager
attention at every forward (packed rows and padded rows alike), on the device, so the step never waits on the host.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
from torch import nn

ATTENTION = ("auto", "flash_attention_2", "sdpa", "eager", "flex_attention")


def resolve_attention(name: str) -> str:
    """`auto` made concrete: FlashAttention 2 when it can run here, sdpa otherwise. Never a kernel from a hub."""
    if name != "auto":
        return name
    usable = torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if usable else "sdpa"


DENSE_MASK_ATTENTION = ("sdpa", "eager")  # attention that takes a (batch, 1, query, key) mask


def attention_inputs(
    model: nn.Module, inputs: dict[str, torch.Tensor], sample_ids: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """`inputs` with the attention mask made here, on the device, for sdpa and eager attention; `model` is the
    model itself (a runner's `module`), whose config names its attention and whose dtype an eager mask takes.

    Why: transformers derives the mask itself and, to tell a packed batch from a plain one, reads a value on the
    host (`find_packed_sequence_indices`, `padding_mask.all()`): one sync per forward. Made here, the mask is the
    same (causal, within a packed sample, over real keys) and the forward never waits on the host. Flash
    attention keeps its own path (position ids or a 2-D mask). `sample_ids` (`packed_sample_ids`, made with the
    batch on the host) saves two ops of a packed batch's mask."""
    implementation = model.config._attn_implementation
    if implementation not in DENSE_MASK_ATTENTION:
        return inputs
    input_ids = inputs["input_ids"]
    length = input_ids.shape[1]
    causal = _causal(length, input_ids.device)
    if "position_ids" in inputs:  # packed: a sample starts at position 0; padding is a sample of its own
        sample = packed_sample_ids(inputs["position_ids"]) if sample_ids is None else sample_ids  # (B, 1, T, 1)
        mask = (sample == sample.transpose(2, 3)) & causal
    else:  # padded: causal over the real keys, and every query sees itself (a padding row is never all masked)
        real = inputs["attention_mask"].bool()
        mask = ((real[:, None, :] & causal) | _causal(length, input_ids.device, diagonal=True))[:, None]
    if implementation == "eager":  # added to the scores
        dtype = model.dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    return {**inputs, "attention_mask": mask}


def packed_sample_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Which packed sample each token belongs to (a sample starts at position 0), numbered along its row; shaped
    (B, 1, T, 1), a query axis of the attention mask."""
    return (position_ids == 0).cumsum(-1)[:, None, :, None]


@functools.cache
def _causal(length: int, device: torch.device, diagonal: bool = False) -> torch.Tensor:
    """(length, length) bool: key <= query (or key == query). Made once per length: masks cost no launch for it."""
    ones = torch.ones(length, length, dtype=torch.bool, device=device)
    return ones.diag().diag_embed() if diagonal else ones.tril()
