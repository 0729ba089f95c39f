"""Shared machinery of the mixture-of-LoRA-experts adapters (MoLoRA, MoR1E, SMoRA).

Each wraps one frozen nn.Linear: y = W·x + update(dropout(x)), where update routes every token to a few
low-rank experts. Routing is computed densely with masks, never with a Python loop over experts, so every
adapter parameter takes part in every step's graph and an expert with no tokens on one rank cannot hang
ZeRO-3's collectives. The up-projections start at zero, so the adapted model equals the base at step 0.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from mtft.adapters.base import ADAPTER_CONFIG_FILE, AdapterRuntime, LowRankConfig
from mtft.distributed import all_reduce_sum
from mtft.errors import ConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PRIOR_MODULE = "mtft_intuition"  # a model-level routing prior (adapters/intuition.py), saved with the adapter


class ExpertLinear(nn.Module):
    """A frozen Linear plus a routed low-rank update; counts how often each expert is chosen."""

    def __init__(self, base: nn.Linear, num_experts: int, dropout: float):
        super().__init__()
        self.base = base
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.num_experts = num_experts
        # loads since the last log (summed over ranks, applied steps only) and since the last step (this rank)
        self.register_buffer("window_load", torch.zeros(num_experts), persistent=False)
        self.register_buffer("step_load", torch.zeros(num_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None
        self.token_mask: torch.Tensor | None = None  # (batch, seq) bool, real tokens of the next forward
        self.bypass = False  # True inside base_only(): the frozen layer alone
        self.recomputing = False  # True while gradient checkpointing reruns the forward: record nothing twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return self.base(x)
        return self.base(x) + self.update(self.dropout(x)).to(x.dtype)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def record_load(self, chosen: torch.Tensor) -> None:
        """`chosen` (..., experts): 1 where a token selected the expert (or its dense gate mass)."""
        if self.training and not self.recomputing:
            self.step_load += self.at_real_tokens(chosen.detach()).reshape(-1, self.num_experts).float().sum(0)

    def at_real_tokens(self, values: torch.Tensor) -> torch.Tensor:
        """`values` (..., experts) with every padding position set to 0. By selection, not by a product, so
        nothing at a padding position (even a NaN) reaches a statistic or an auxiliary loss, and no gradient
        flows back to it."""
        if self.token_mask is None:
            return values
        return torch.where(self.token_mask.unsqueeze(-1), values, 0.0)

    def real_token_count(self, values: torch.Tensor) -> torch.Tensor:
        """How many positions of `values` (..., experts) are real tokens (at least 1)."""
        if self.token_mask is None:
            return torch.tensor(float(values[..., 0].numel()), device=values.device)
        return self.token_mask.sum().float().clamp_min(1)

    def after_optimizer_step(self, step_load: torch.Tensor) -> None:
        """`step_load`: this step's loads summed over all ranks, for an applied step."""
        self.window_load += step_load

    def take_stats(self) -> dict[str, Any]:
        """Load fraction per expert, normalised routing entropy and dead experts over this window (its loads
        summed over ranks); then a new window starts."""
        load = self.window_load.clone()
        self.window_load.zero_()
        total = float(load.sum())
        if total == 0:
            return {}
        fraction = load / total
        entropy = float(-(fraction * fraction.clamp_min(1e-12).log()).sum()) / math.log(self.num_experts or 2)
        return {"load": [round(float(f), 5) for f in fraction], "entropy": entropy, "dead": int((load == 0).sum())}


def lora_pair(rank_in: int, rank_out: int, in_features: int, out_features: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Down-projection (kaiming, as PEFT) and up-projection (zeros): the update starts at exactly zero."""
    down = nn.Parameter(torch.empty(rank_in, in_features))
    nn.init.kaiming_uniform_(down, a=math.sqrt(5))
    return down, nn.Parameter(torch.zeros(out_features, rank_out))


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(scores).scatter_(-1, scores.topk(k, dim=-1).indices, 1.0)


# ---- injection, save, load ------------------------------------------------------------------------------------


def inject_experts(model: nn.Module, cfg: LowRankConfig, make: Callable[[nn.Linear], ExpertLinear]) -> nn.Module:
    """Freeze the base and wrap every targeted Linear (never the output head)."""
    model.requires_grad_(False)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and module is not head
        and (cfg.target_modules == "all-linear" or name.rsplit(".", 1)[-1] in cfg.target_modules)
    ]
    if not targets:
        raise ConfigError("adapter.target_modules", f"{cfg.target_modules!r} matches no Linear layer of the model")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, make(getattr(parent, child)))
    return model


def expert_layers(model: nn.Module) -> dict[str, ExpertLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ExpertLinear)}


@contextlib.contextmanager
def base_only(model: nn.Module):
    """Run the base model alone (e.g. to embed instances for a routing prior), whatever adapters it carries."""
    layers = expert_layers(model).values()
    for layer in layers:
        layer.bypass = True
    try:
        yield
    finally:
        for layer in layers:
            layer.bypass = False


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything the adapter owns but the frozen base: expert weights, routers, persistent buffers, and the
    model-level routing prior if there is one."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, ExpertLinear) or name == PRIOR_MODULE:
            for key, value in module.state_dict().items():
                if not key.startswith("base."):
                    state[f"{name}.{key}"] = value.detach().contiguous()
    return state


def save_experts(model: nn.Module, directory: Path) -> None:
    safetensors.torch.save_file(adapter_state(model), str(directory / ADAPTER_WEIGHTS))


def load_experts(model: nn.Module, directory: Path, config_class: type, inject: Callable) -> nn.Module:
    """Inject the saved method (its config from the JSON beside the weights), then restore its tensors."""
    cfg = config_class(**json.loads((directory / ADAPTER_CONFIG_FILE).read_text()))
    model = inject(model, cfg)
    state = safetensors.torch.load_file(str(directory / ADAPTER_WEIGHTS))
    expected = adapter_state(model).keys()
    if set(state) != set(expected):
        raise ValueError(
            f"{directory}: adapter weights do not match the model ({sorted(set(state) ^ set(expected))[:5]})"
        )
    model.load_state_dict(state, strict=False)
    return model


# ---- hooks the training loop calls, whatever the adapter ------------------------------------------------------


def aux_loss(layers: list[ExpertLinear]) -> torch.Tensor | float:
    """Sum of the layers' auxiliary losses from their last forward (MoLoRA's load balancing), or 0."""
    return sum((layer.aux_loss for layer in layers if layer.aux_loss is not None), 0.0)


def set_token_mask(layers: list[ExpertLinear], mask: torch.Tensor | None) -> None:
    """Mark the next batch's real tokens: padding must count neither towards an expert's load nor in the load
    balancing built on it (SMoRA's biases). None when the step is over."""
    for layer in layers:
        layer.token_mask = mask


def after_optimizer_step(layers: list[ExpertLinear], applied: bool = True) -> None:
    """Hand every layer its step's loads, summed over ranks in one all-reduce for all layers. A skipped step
    (training/guard.py) leaves no trace: its loads count nowhere and no balancing bias moves."""
    if not layers:
        return
    loads = all_reduce_sum(torch.cat([layer.step_load for layer in layers]))
    for layer, load in zip(layers, loads.split([layer.num_experts for layer in layers]), strict=True):
        if applied:
            layer.after_optimizer_step(load)
        layer.step_load.zero_()


def router_metrics(layers: dict[str, ExpertLinear]) -> dict[str, Any]:
    """`router/<layer>/{load,entropy,dead}` plus means over layers, for metrics.jsonl. The window's loads are
    already summed over ranks, so an expert counts as dead only if no rank used it."""
    metrics: dict[str, Any] = {}
    entropies, dead = [], 0
    for name, layer in layers.items():
        stats = layer.take_stats()
        if stats:
            metrics.update({f"router/{name}/{k}": v for k, v in stats.items()})
            entropies.append(stats["entropy"])
            dead += stats["dead"]
    if entropies:
        metrics["router/mean_entropy"] = sum(entropies) / len(entropies)
        metrics["router/dead_experts"] = dead
    return metrics


class ExpertsRuntime(AdapterRuntime):
    """The loop's handle on a mixture of experts: real-token masks in, auxiliary losses and router stats out,
    load balancing after each applied step."""

    def __init__(self, model: nn.Module):
        self.layers = expert_layers(model)
        self.modules = list(self.layers.values())

    def before_forward(self, batch: dict[str, torch.Tensor]) -> None:
        set_token_mask(self.modules, batch["task_ids"] >= 0)  # padding carries a negative task id

    def aux_loss(self) -> torch.Tensor | float:
        return aux_loss(self.modules)

    @contextlib.contextmanager
    def recomputation(self):
        for layer in self.modules:
            layer.recomputing = True
        try:
            yield
        finally:
            for layer in self.modules:
                layer.recomputing = False

    def after_step(self, applied: bool) -> None:
        set_token_mask(self.modules, None)
        after_optimizer_step(self.modules, applied)  # e.g. SMoRA's bias update, from the loads over all ranks

    def metrics(self) -> dict[str, Any]:
        return router_metrics(self.layers)
