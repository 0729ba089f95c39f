"""Shared machinery of the mixture-of-LoRA-experts adapters: each method's own file builds on it, and nothing here
knows one method from another.

Each wraps one frozen nn.Linear: y = W·x + s·update(dropout(x)), where update routes every token to a few
low-rank experts and s is the method's scaling. Routing is computed densely with masks, never with a Python loop
over experts, so every adapter parameter takes part in every step's graph and an expert with no tokens on one rank
cannot hang ZeRO-3's collectives. The up-projections start at zero, so the adapted model equals the base at step 0.

Why hand-written backwards: a step's overhead on a GPU is one launch per op, and autograd through nn.Linear and the
gate arithmetic dispatched about 80 ops per wrapped layer more than PEFT's LoRA. `LowRankIn` and `LowRankOut` (the
projections) and each method's gate function (its file) compute the same values with far fewer ops; tests check
them against autograd through the plain formulas. The router weight is a parameter of the layer itself, not of a
child nn.Linear, because ZeRO-3 gathers a module's own parameters for its forward only.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from mtft.adapters.base import ADAPTER_CONFIG_FILE, AdapterMethod, AdapterRuntime, LowRankConfig, target_linears
from mtft.distributed import all_reduce_sum
from mtft.errors import ConfigError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
LEGACY_ROUTER_KEY = "router.weight"  # the router was an nn.Linear child until the layers' backwards were written


@dataclass(frozen=True)
class RealTokens:
    """A micro-batch's real (non-padding) tokens in the forms the routers use, built once for all layers."""

    selector: torch.Tensor  # (batch, seq, 1) bool: selects values, so nothing at padding (even a NaN) gets in
    weights: torch.Tensor  # (batch, seq) 1.0 at real tokens, 0.0 at padding: counts 0/1 choices in one product
    count: torch.Tensor  # () how many there are (at least 1)
    scaled: dict[float, torch.Tensor] = field(default_factory=dict, compare=False)  # per_square_count's

    @classmethod
    def of(cls, mask: torch.Tensor) -> RealTokens:
        weights = mask.float()
        return cls(mask.unsqueeze(-1), weights, weights.sum().clamp_min(1))

    def per_square_count(self, scale: float) -> torch.Tensor:
        """() scale / count²: a Switch load-balancing loss's constant, one op per batch for all the layers that ask,
        not two per layer."""
        if scale not in self.scaled:
            self.scaled[scale] = torch.pow(self.count, -2) * scale
        return self.scaled[scale]


class SharedLayerState(nn.Module):
    """State that all of an adapter's layers share, held once on the model rather than in each layer (e.g. a routing
    prior's centroids): a module of this type is the adapter's, so it is saved and loaded with the layers. What it
    holds for the next forward is the adapter runtime's to set (`AdapterRuntime.before_forward`, `before_generate`).
    """


class ExpertLinear(nn.Module):
    """A frozen Linear plus a routed low-rank update; counts how often each expert is chosen."""

    scaling = 1.0  # s in y = W·x + s·update(x); each method sets its own

    def __init__(self, base: nn.Linear, num_experts: int, dropout: float):
        super().__init__()
        self.base = base
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.num_experts = num_experts
        # loads since the last log (summed over ranks, applied steps only) and since the last step (this rank)
        self.register_buffer("window_load", torch.zeros(num_experts), persistent=False)
        self.register_buffer("step_load", torch.zeros(num_experts), persistent=False)
        self.aux_loss: torch.Tensor | None = None
        self.real_tokens: RealTokens | None = None  # of the next forward's batch
        self.bypass = False  # True inside base_only(): the frozen layer alone
        self.recomputing = False  # True while gradient checkpointing reruns the forward: record nothing twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return self.base(x)
        return torch.add(self.base(x), self.update(self.dropout(x)), alpha=self.scaling)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def recording(self) -> bool:
        return self.training and not self.recomputing

    @torch.no_grad()
    def record_load(self, chosen: torch.Tensor) -> None:
        """`chosen` (..., experts): 1 where a token selected the expert."""
        if self.recording:
            self.step_load += self.count_real(chosen)

    @torch.no_grad()
    def record_mass(self, gates: torch.Tensor) -> None:
        """Dense routing: each expert's gate mass (..., experts) counts as its load."""
        if self.recording:
            self.step_load += self.sum_real(gates)

    def count_real(self, chosen: torch.Tensor) -> torch.Tensor:
        """(experts,) how many real tokens chose each expert. A top-k mask is finite everywhere, so a product with
        the 0/1 token weights counts exactly."""
        if self.real_tokens is None:
            return torch.einsum("...e->e", chosen)
        return torch.einsum("...,...e->e", self.real_tokens.weights, chosen)

    def sum_real(self, values: torch.Tensor) -> torch.Tensor:
        """(experts,) the sum of `values` (..., experts) over the real tokens. By selection, not by a product, so
        nothing at a padding position (even a NaN) reaches a statistic or an auxiliary loss, and no gradient flows
        back to it."""
        if self.real_tokens is not None:
            values = torch.where(self.real_tokens.selector, values, 0.0)
        return values.sum(dim=tuple(range(values.dim() - 1)))

    @staticmethod
    @torch.no_grad()
    def apply_step_loads(layers: list[ExpertLinear], step_loads: torch.Tensor) -> None:
        """`step_loads` (layers, experts): this step's loads of these layers (one method, one width), summed over
        all ranks, for an applied step. One op for all layers, not a few per layer."""
        torch._foreach_add_([layer.window_load for layer in layers], step_loads.unbind(0))

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

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        legacy = prefix + LEGACY_ROUTER_KEY
        if legacy in state_dict:
            state_dict[prefix + "router_weight"] = state_dict.pop(legacy)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def lora_pair(rank_in: int, rank_out: int, in_features: int, out_features: int) -> tuple[nn.Parameter, nn.Parameter]:
    """Down-projection (kaiming, as PEFT) and up-projection (zeros): the update starts at exactly zero."""
    down = nn.Parameter(torch.empty(rank_in, in_features))
    nn.init.kaiming_uniform_(down, a=math.sqrt(5))
    return down, nn.Parameter(torch.zeros(out_features, rank_out))


def init_router(experts: int, in_features: int) -> nn.Parameter:
    """The router's (experts, in_features) weight, N(0, 1/in_features): logits of order 1 at the start. Drawn after
    nn.Linear's own init, as when the router was one, so a seed gives the same weights as it did."""
    weight = nn.Parameter(torch.empty(experts, in_features))
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    return nn.init.normal_(weight, std=in_features**-0.5)


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    return torch.zeros_like(scores).scatter_(-1, scores.topk(k, dim=-1).indices, 1.0)


def cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`tensor` in `dtype`, dispatching nothing when it already is."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def routing_dtype(logits: torch.Tensor) -> torch.dtype:
    """Routing decisions and gate values in fp32 at least, whatever the layer's precision."""
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def weight_grad(grad_out: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Σ over tokens of grad_out ⊗ inputs: a Linear's weight gradient, one matrix product whatever the batch shape
    (a tensordot is one mm over the flattened tokens; an einsum takes a batched product, slower on a CPU)."""
    tokens = list(range(grad_out.dim() - 1))
    return torch.tensordot(grad_out, inputs, dims=(tokens, tokens))


class LowRankIn(torch.autograd.Function):
    """(A·x, W_r·x): the experts' down-projections and the router logits of every token. Backward: dx, dA, dW_r
    in four matrix products and an add (autograd, through two nn.Linear: 17 ops)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, down: torch.Tensor, router: torch.Tensor):
        ctx.save_for_backward(x, down, router)
        return F.linear(x, down), F.linear(x, router)

    @staticmethod
    def backward(ctx, grad_hidden: torch.Tensor, grad_logits: torch.Tensor):
        x, down, router = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:  # one product of the stacked gradients: one tokens × in buffer, not three
            grad_x = torch.matmul(torch.cat([grad_hidden, grad_logits], -1), torch.cat([down, router]))
        return grad_x, weight_grad(grad_hidden, x), weight_grad(grad_logits, x)


class LowRankOut(torch.autograd.Function):
    """B·h, the up-projection of the gated hidden state h. Backward: two matrix products."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(hidden, up)
        return F.linear(hidden, up)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, up = ctx.saved_tensors
        grad_hidden = torch.matmul(grad_out, up) if ctx.needs_input_grad[0] else None
        return grad_hidden, weight_grad(grad_out, hidden)


def softmax_backward(grad: torch.Tensor, probs: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """d/dz of softmax(z) = probs, in `dtype` (the logits'): probs ⊙ (grad − Σ grad ⊙ probs), one op. Also the
    backward of a renormalised top-k softmax m ⊙ p / Σ m ⊙ p, taking its output as `probs`: that is a softmax over
    the chosen logits."""
    return torch.ops.aten._softmax_backward_data(cast(grad, probs.dtype), probs, -1, dtype)


# ---- injection, save, load ------------------------------------------------------------------------------------


def inject_experts(model: nn.Module, cfg: LowRankConfig, make: Callable[[nn.Linear], ExpertLinear]) -> nn.Module:
    """Freeze the base and wrap every targeted Linear (never the output head)."""
    model.requires_grad_(False)
    targets = [name for name, _ in target_linears(model, cfg.target_modules)]
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
    """Run the base model alone, whatever adapters it carries (e.g. to embed the inputs that an instance-level
    router is conditioned on)."""
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
    state its layers share (`SharedLayerState`) if it has any."""
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, (ExpertLinear, SharedLayerState)):
            for key, value in module.state_dict().items():
                if not key.startswith("base."):
                    state[f"{name}.{key}"] = value.detach().contiguous()
    return state


def renamed(key: str) -> str:
    """A saved key in today's naming (adapters saved before the router became the layer's own parameter)."""
    return key.removesuffix(LEGACY_ROUTER_KEY) + "router_weight" if key.endswith("." + LEGACY_ROUTER_KEY) else key


def save_experts(model: nn.Module, directory: Path) -> None:
    safetensors.torch.save_file(adapter_state(model), str(directory / ADAPTER_WEIGHTS))


def load_experts(model: nn.Module, directory: Path, config_class: type, inject: Callable) -> nn.Module:
    """Inject the saved method (its config from the JSON beside the weights), then restore its tensors."""
    cfg = config_class(**json.loads((directory / ADAPTER_CONFIG_FILE).read_text()))
    model = inject(model, cfg)
    saved = safetensors.torch.load_file(str(directory / ADAPTER_WEIGHTS))
    state = {renamed(key): value for key, value in saved.items()}
    expected = adapter_state(model).keys()
    if set(state) != set(expected):
        raise ValueError(
            f"{directory}: adapter weights do not match the model ({sorted(set(state) ^ set(expected))[:5]})"
        )
    model.load_state_dict(state, strict=False)
    return model


# ---- hooks the training loop calls, whatever the adapter ------------------------------------------------------


def aux_loss(layers: list[ExpertLinear]) -> torch.Tensor | float:
    """Sum of the layers' auxiliary losses from their last forward (e.g. a load-balancing loss), or 0."""
    losses = [layer.aux_loss for layer in layers if layer.aux_loss is not None]
    return torch.stack(losses).sum() if losses else 0.0  # two ops, not one add per layer


def set_token_mask(layers: list[ExpertLinear], mask: torch.Tensor | None) -> None:
    """Mark the next batch's real tokens (`mask` (batch, seq) bool): padding must count neither towards an expert's
    load nor in the load balancing built on it (e.g. balancing biases). None when the step is over."""
    real = None if mask is None else RealTokens.of(mask)
    for layer in layers:
        layer.real_tokens = real


def after_optimizer_step(layers: list[ExpertLinear], applied: bool = True) -> None:
    """Hand every layer its step's loads, summed over ranks in one all-reduce for all layers. A skipped step
    (training/guard.py) leaves no trace: its loads count nowhere and no balancing bias moves."""
    if not layers:
        return
    loads = all_reduce_sum(torch.cat([layer.step_load for layer in layers]))
    if applied:
        per_layer = loads.split([layer.num_experts for layer in layers])
        groups: dict[tuple, list[int]] = defaultdict(list)  # one method and width: their loads stack
        for index, layer in enumerate(layers):
            groups[type(layer), layer.num_experts].append(index)
        for (kind, _), members in groups.items():
            kind.apply_step_loads([layers[i] for i in members], torch.stack([per_layer[i] for i in members]))
    torch._foreach_zero_([layer.step_load for layer in layers])


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
        after_optimizer_step(self.modules, applied)  # e.g. a balancing bias update, from the loads over all ranks

    def metrics(self) -> dict[str, Any]:
        return router_metrics(self.layers)


def experts_method(config: type[LowRankConfig], inject: Callable, runtime: Callable | None = None) -> AdapterMethod:
    """A mixture-of-experts method: saved as its own safetensors; routing is per token, so it cannot be merged."""
    load = functools.partial(load_experts, config_class=config, inject=inject)
    return AdapterMethod(config, inject, save_experts, load, runtime or (lambda model, cfg: ExpertsRuntime(model)))
