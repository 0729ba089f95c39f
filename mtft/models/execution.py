"""How the model runs rather than what it computes: eval mode for a block of work, recomputing activations in the
backward (memory for time), and compiling its repeated blocks. Parameter names, checkpoints and hooks stay as they
are under all three."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol, TypeVar

from torch import nn

from mtft.errors import ConfigError


class Switchable(Protocol):
    """Anything with a training flag and the calls that set it: a model, or a `ModelRunner` around one
    (training/model_runner.py), whose wrapper must see the switch too."""

    @property
    def training(self) -> bool: ...

    def train(self, mode: bool = True) -> object: ...

    def eval(self) -> object: ...


S = TypeVar("S", bound=Switchable)


@contextlib.contextmanager
def eval_mode(model: S) -> Iterator[S]:
    """The model in eval mode (no dropout) inside the block, and back in the mode it was in after, also when the
    block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def enable_gradient_checkpointing(model: nn.Module, recomputation: Callable[[], AbstractContextManager]) -> None:
    """Recompute each decoder layer's activations in the backward instead of keeping them (non-reentrant, so it
    works with frozen inputs, PEFT and ZeRO-3). `recomputation()` is entered around each recomputation: an
    adapter uses it to keep statistics and auxiliary losses from being counted twice."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False, "context_fn": lambda: (contextlib.nullcontext(), recomputation())}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x; the older name is deprecated
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def compile_blocks(model: nn.Module) -> int:
    """`torch.compile` each repeated block (the classes transformers names in `_no_split_modules`, e.g. the
    decoder layers), in place: parameter names, checkpoints and hooks stay as they are, and one compilation
    serves every layer. Returns how many modules were compiled."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError("trainer.compile", f"{type(base).__name__} names no repeated block (_no_split_modules)")
    for block in blocks:
        block.compile()
    return len(blocks)
