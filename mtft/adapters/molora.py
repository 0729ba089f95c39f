"""MoLoRA: E LoRA experts of rank r_e per layer behind a softmax top-k router (Zadouri et al. 2023, with
Mixtral-style renormalised top-k), and an optional Switch-Transformer load-balancing loss.

Hyperparameters: `num_experts` E, `expert_rank` r_e, `top_k`, `alpha` (scaling α/r_e), `aux_loss_coef`.

Computed as one LoRA of rank E·r_e whose rank blocks are scaled by the token's gates: no loop over experts, no
tokens × k × hidden tensor, and every expert is in every step's graph. Auxiliary loss (Switch eq. 4):
coef · E · Σ_e f_e·P_e, with f_e the fraction of routed slots that chose e and P_e its mean router probability,
both over real tokens only and in fp32. Padding takes no part and gets no gradient from it. (Averaged over every
position, it was the one term that sent gradients into padding, and on an H100 with packed bf16 rows MoLoRA's
gradients were NaN with it and finite without it: issue 11.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtft.adapters.base import LowRankConfig, nearest_to_lora, register_adapter
from mtft.adapters.moe import (
    ExpertLinear,
    LowRankIn,
    LowRankOut,
    RealTokens,
    cast,
    experts_method,
    init_router,
    inject_experts,
    lora_pair,
    routing_dtype,
    softmax_backward,
    top_k_mask,
)
from mtft.errors import check


@dataclass
class MoLoRAConfig(LowRankConfig):
    name: str = "molora"
    num_experts: int = 4
    expert_rank: int = 4
    top_k: int = 2
    aux_loss_coef: float = 0.01  # 0 turns the balancing loss off

    @classmethod
    def at_lora_budget(
        cls, rank: int, alpha: float, shapes: list[tuple[int, int]], settings: dict[str, Any] | None = None
    ) -> MoLoRAConfig | None:
        """Top-2 of 4 to 16 experts (Mixtral's 8 within a factor of two), the count and expert rank whose
        parameters (experts and router) are nearest LoRA's. A small budget has no such mixture: on SmolLM2-135M's
        shapes at LoRA r4, 4 rank-1 experts are +49% (3 would be +12%)."""
        candidates = (
            cls(num_experts=experts, expert_rank=expert_rank, top_k=2, alpha=alpha)
            for experts in range(4, 17)
            for expert_rank in range(1, rank + 1)
        )
        return nearest_to_lora(candidates, rank, shapes, settings)

    def layer_parameters(self, in_features: int, out_features: int) -> int:
        width = self.num_experts * self.expert_rank
        return width * (in_features + out_features) + self.num_experts * in_features  # the experts; the router

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_experts > 0, "num_experts", f"must be > 0, got {self.num_experts}")
        check(self.expert_rank > 0, "expert_rank", f"must be > 0, got {self.expert_rank}")
        check(0 < self.top_k <= self.num_experts, "top_k", f"must be in [1, num_experts], got {self.top_k}")
        check(self.aux_loss_coef >= 0, "aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")


class ExpertGates(torch.autograd.Function):
    """G·g ⊙ h for h = A·x (E blocks of r_e ranks), g the renormalised top-k of p = softmax(logits) (fp32) and G
    the (E·r_e, E) matrix that repeats each expert's gate over its ranks, times the scaling α/r_e (in the routing
    dtype: exact, and the caller's add needs no scaling, so no op in the backward). Also returns p
    (differentiable: the auxiliary loss's) and the top-k mask (not: the loads').

    Backward: a renormalised top-k softmax is a softmax over the chosen logits, so dL/dlogits is one softmax
    backward through g, plus one through p for the auxiliary loss."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, logits: torch.Tensor, expansion: torch.Tensor, k: int):
        probs = torch.softmax(logits, -1, dtype=routing_dtype(logits))
        chosen = top_k_mask(probs, k)
        weights = chosen * probs
        gates = weights / weights.sum(-1, keepdim=True)
        rank_gates = cast(F.linear(gates, expansion), hidden.dtype)
        ctx.save_for_backward(hidden, gates, rank_gates, probs, expansion)
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(chosen)
        ctx.set_materialize_grads(False)
        return rank_gates * hidden, probs, chosen

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, grad_probs: torch.Tensor | None, _):
        hidden, gates, rank_gates, probs, expansion = ctx.saved_tensors
        grad_hidden = grad_logits = None
        if grad is not None:
            grad_hidden = grad * rank_gates
            grad_gates = torch.matmul(cast(grad * hidden, gates.dtype), expansion)
            grad_logits = softmax_backward(grad_gates, gates, ctx.logits_dtype)
        if grad_probs is not None:
            from_probs = softmax_backward(grad_probs, probs, ctx.logits_dtype)
            grad_logits = from_probs if grad_logits is None else grad_logits + from_probs
        return grad_hidden, grad_logits, None, None


class SwitchLoss(torch.autograd.Function):
    """c·Σ_e routed_e·Σ_t p_te over the real tokens t, or all: the Switch loss, with `routed` (no gradient) the
    real tokens that chose each expert and c (a 0-d tensor, or a number) the constants. Forward: a selection and
    one product; backward: dL/dp_te = c·routed_e at each real token, 0 at padding, in one product."""

    @staticmethod
    def forward(ctx, probs: torch.Tensor, routed: torch.Tensor, weight, real: RealTokens | None) -> torch.Tensor:
        ctx.save_for_backward(routed)
        ctx.weight, ctx.real, ctx.shape = weight, real, probs.shape
        if real is None:
            return torch.einsum("...e,e->", probs, routed) * weight
        return torch.einsum("...e,e,->", torch.where(real.selector, probs, 0.0), routed, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (routed,) = ctx.saved_tensors
        if ctx.real is None:
            return (routed * (grad * ctx.weight)).expand(ctx.shape), None, None, None
        return torch.einsum("...,e,,->...e", ctx.real.weights, routed, ctx.weight, grad), None, None, None


class MoLoRALinear(ExpertLinear):
    def __init__(self, base: nn.Linear, cfg: MoLoRAConfig):
        super().__init__(base, cfg.num_experts, cfg.dropout)
        width = cfg.num_experts * cfg.expert_rank
        self.lora_A, self.lora_B = lora_pair(width, width, base.in_features, base.out_features)
        self.router_weight = init_router(cfg.num_experts, base.in_features)
        self.expert_rank, self.top_k, self.aux_coef = cfg.expert_rank, cfg.top_k, cfg.aux_loss_coef
        self.expert_scaling = cfg.alpha / cfg.expert_rank  # in the expansion; the layer's own scaling stays 1
        self.register_buffer("expansion", self.expansion_matrix(torch.float32), persistent=False)

    def expansion_matrix(self, dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
        eye = torch.eye(self.num_experts, dtype=dtype, device=device) * self.expert_scaling
        return eye.repeat_interleave(self.expert_rank, dim=0)

    def routing_expansion(self, dtype: torch.dtype) -> torch.Tensor:
        """The expansion in the routing dtype. DeepSpeed's bf16 engine casts only the parameters; a cast of the
        whole module (e.g. .to(bfloat16)) would round the scaling, so the buffer is rebuilt, once, instead."""
        if self.expansion.dtype != dtype:
            self.expansion = self.expansion_matrix(dtype, self.expansion.device)
        return self.expansion

    def update(self, x: torch.Tensor) -> torch.Tensor:
        hidden, logits = LowRankIn.apply(x, self.lora_A, self.router_weight)
        expansion = self.routing_expansion(routing_dtype(logits))
        gated, probs, chosen = ExpertGates.apply(hidden, logits, expansion, self.top_k)
        balancing = self.training and self.aux_coef > 0
        if self.recording or balancing:
            routed = self.count_real(chosen)
            if balancing:
                aux = self.switch_loss(probs, routed)  # also when recomputing: a rerun saves the same tensors
                if not self.recomputing:
                    self.aux_loss = aux
            if self.recording:
                self.step_load += routed
        return LowRankOut.apply(gated, self.lora_B)

    def switch_loss(self, probs: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
        """coef · E · Σ_e f_e·P_e over the real tokens, from `probs` (..., experts) in fp32 and `routed` (experts,),
        how many real tokens chose each expert: f_e = routed_e / (T·k), P_e = Σ_t probs_te / T. The constant
        coef·E/(k·T²) is computed once per batch for all layers (RealTokens.per_square_count)."""
        scale = self.aux_coef * self.num_experts / self.top_k
        if self.real_tokens is None:
            return SwitchLoss.apply(probs, routed, scale / float(probs[..., 0].numel()) ** 2, None)
        return SwitchLoss.apply(probs, routed, self.real_tokens.per_square_count(scale), self.real_tokens)


def inject(model: nn.Module, cfg: MoLoRAConfig) -> nn.Module:
    return inject_experts(model, cfg, lambda linear: MoLoRALinear(linear, cfg))


register_adapter("molora", experts_method(MoLoRAConfig, inject))
