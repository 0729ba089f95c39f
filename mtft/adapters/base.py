"""What every adapter method provides: a config, injection into a base model, and save/load of what it trains."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import nn

from mtft.distributed import full_numel
from mtft.errors import check
from mtft.registry import Registry

ADAPTER_CONFIG_FILE = "mtft_adapter.json"
BUDGET_TOLERANCE = 0.05  # `at_lora_budget`: within 5% of LoRA's trainable parameters, or no configuration


@dataclass
class AdapterConfig:
    name: str = ""
    # capabilities, so no caller branches on a method's name
    can_merge: ClassVar[bool] = False  # its update folds into the base weights (mtft-export merge=true)
    is_full_model: ClassVar[bool] = False  # it trains (and saves) the whole model, not an adapter
    is_baseline: ClassVar[bool] = False  # the method the benchmarks compare every other with (PEFT LoRA)
    # settings other than the defaults that the test matrices also run (a path the defaults never take), and those
    # that only a run on real data can take (e.g. a prior fitted on the tasks): end-to-end matrices run both
    matrix_variants: ClassVar[tuple[dict[str, Any], ...]] = ()
    run_variants: ClassVar[tuple[dict[str, Any], ...]] = ()

    @classmethod
    def at_lora_budget(
        cls, rank: int, alpha: float, shapes: list[tuple[int, int]], settings: dict[str, Any] | None = None
    ) -> AdapterConfig | None:
        """This method as the benchmarks set it beside LoRA of `rank` and `alpha` on Linears of these (in, out)
        shapes, with `settings` fixed (a run variant's: MoR1E's prior costs parameters too): its trainable
        parameters within BUDGET_TOLERANCE of LoRA's (`nearest_to_lora`). None: the benchmarks do not compare it
        there (full fine-tuning; a budget too tight for the method's steps)."""
        return None


@dataclass
class LowRankConfig(AdapterConfig):
    """What LoRA and every mixture of LoRA experts share."""

    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"  # module names, or every Linear except the output head

    def __post_init__(self) -> None:
        check(self.alpha > 0, "alpha", f"must be > 0, got {self.alpha}")
        check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(len(self.target_modules) > 0, "target_modules", "name at least one module, or 'all-linear'")

    def layer_parameters(self, in_features: int, out_features: int) -> int:
        """What wrapping one Linear of these sizes trains: every parameter the layer adds (experts, routers,
        gates), none of the frozen base's."""
        raise NotImplementedError(f"{type(self).__name__} does not count its parameters")

    def trainable_parameters(self, shapes: Iterable[tuple[int, int]]) -> int:
        """What injecting this config into Linears of these (in, out) shapes trains."""
        return sum(count * self.layer_parameters(*shape) for shape, count in Counter(shapes).items())


def lora_parameters(rank: int, shapes: Iterable[tuple[int, int]]) -> int:
    """PEFT LoRA's trainable parameters at `rank`: A (rank × in) and B (out × rank) per Linear."""
    return rank * sum(i + o for i, o in shapes)


Candidate = TypeVar("Candidate", bound=LowRankConfig)


def nearest_to_lora(
    candidates: Iterable[Candidate], rank: int, shapes: list[tuple[int, int]], settings: dict[str, Any] | None = None
) -> Candidate | None:
    """The candidate, with `settings` applied, whose trainable parameters on Linears of `shapes` are nearest LoRA's
    at `rank` (the first of equals), if within BUDGET_TOLERANCE of them. Else None, with a warning that says by
    how much the nearest misses: at a tight budget one rank or expert more is a step of 10% or more of LoRA's
    parameters."""
    distinct = Counter(shapes)  # a model repeats a few shapes: count each once
    candidates = [dataclasses.replace(cfg, **(settings or {})) for cfg in candidates]

    def count(cfg: LowRankConfig) -> int:
        return sum(n * cfg.layer_parameters(*shape) for shape, n in distinct.items())

    budget = lora_parameters(rank, shapes)
    nearest = min(candidates, key=lambda cfg: abs(count(cfg) - budget))
    miss = count(nearest) - budget
    if abs(miss) <= BUDGET_TOLERANCE * budget:
        return nearest
    warnings.warn(
        f"{nearest.name}: no configuration has LoRA r{rank}'s {budget:,} trainable parameters within "
        f"{BUDGET_TOLERANCE:.0%}; the nearest, {nearest}, has {miss / budget:+.1%}. Left out at this budget.",
        stacklevel=3,
    )
    return None


class AdapterRuntime:
    """The one object the training loop, evaluation and generation talk to, whatever the adapter; they know none of
    an adapter's internals. LoRA and full fine-tuning use this one, which does nothing; a mixture of experts has
    routers to feed and to balance (adapters/moe.py). Its run-time state lives in the model's buffers, so
    checkpoints carry it. The model carries its runtime (`runtime_of`)."""

    # Routing depends on the prompt apart from the answer (MoR1E's prior): a request that hands the model prompt and
    # answer as one sequence (lm-eval's scored requests) cannot be routed as in training.
    routes_on_the_prompt: ClassVar[bool] = False

    def prepare(self, model: nn.Module, tasks: list, pad_token_id: int, seed: int) -> None:
        """Before training, on the engine's device, with the tokenized tasks (e.g. MoR1E fits its prior).
        Deterministic, so a resumed run recomputes the same."""

    def prepare_inference(self, model: nn.Module, tasks: list, pad_token_id: int) -> None:
        """Before evaluating a trained model: what `prepare` fitted is restored with the weights; only the
        samples' routing inputs are computed from it (e.g. MoR1E's prior, from the saved centroids)."""

    def before_forward(self, batch: dict[str, torch.Tensor]) -> None:
        """Whatever the next forward needs to know about its batch beyond the model's inputs."""

    def before_generate(self, prompts: dict[str, torch.Tensor]) -> None:
        """Before generating from a batch of prompts (`input_ids` and `attention_mask`, padded on either side):
        whatever routing inputs the model needs, from the prompts alone, as training computed them."""

    def aux_loss(self) -> torch.Tensor | float:
        """Auxiliary loss of the last training forward, added to the task loss (0: none)."""
        return 0.0

    def recomputation(self) -> contextlib.AbstractContextManager:
        """Entered while gradient checkpointing reruns a forward in the backward: what the first run recorded
        (routing loads, auxiliary losses) must not be recorded again."""
        return contextlib.nullcontext()

    def after_step(self, applied: bool) -> None:
        """After each optimizer step; `applied` is False when the numerical guard skipped it."""

    def metrics(self) -> dict[str, Any]:
        """Statistics for metrics.jsonl (e.g. `router/...`), since the last call."""
        return {}


class AdapterMethod(NamedTuple):
    config: type[AdapterConfig]
    inject: Callable[[nn.Module, AdapterConfig], nn.Module]  # returns the model to train, trainable flags set
    save: Callable[[nn.Module, Path], None]  # writes the trained weights as safetensors
    load: Callable[[nn.Module, Path], nn.Module]  # restores them onto a freshly loaded base model
    runtime: Callable[[nn.Module, AdapterConfig], AdapterRuntime] = lambda model, cfg: AdapterRuntime()


RUNTIME_ATTRIBUTE = "mtft_runtime"


def attach_runtime(model: nn.Module, runtime: AdapterRuntime) -> nn.Module:
    """Give `model` its adapter's runtime, so whatever generates from it finds the handle with the model."""
    setattr(model, RUNTIME_ATTRIBUTE, runtime)
    return model


def runtime_of(model: nn.Module) -> AdapterRuntime:
    """The runtime attached to `model` (by training or `load_adapter`); a model with none needs nothing."""
    return getattr(model, RUNTIME_ATTRIBUTE, None) or AdapterRuntime()


# Every method's module registers itself here when imported; `mtft.adapters` imports them all.
ADAPTERS: Registry[AdapterMethod] = Registry("adapter")
register_adapter = ADAPTERS.register


def target_linears(model: nn.Module, target_modules: str | list[str] = "all-linear") -> list[tuple[str, nn.Linear]]:
    """(name, layer) of every Linear an adapter wraps: those named in `target_modules`, or all of them for
    "all-linear"; never the output head."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module is not head
        and (target_modules == "all-linear" or name.rsplit(".", 1)[-1] in target_modules)
    ]


def write_adapter_config(cfg: AdapterConfig, directory: Path) -> None:
    """Record which method made `directory`, so `load_adapter` needs nothing else."""
    (directory / ADAPTER_CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(cfg), indent=2))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a ZeRO-3 shard counts as its whole parameter."""
    sizes = [(full_numel(p), p.requires_grad) for p in model.parameters()]
    return sum(n for n, trainable in sizes if trainable), sum(n for n, _ in sizes)
