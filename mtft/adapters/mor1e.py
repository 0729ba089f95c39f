"""MoR1E: mixture of rank-1 experts ("Intuition-aware Mixture-of-Rank-1-Experts", arXiv 2404.08985; T-REX).

Hyperparameters: `num_down` r1, `num_up` r2, `top_k` (0 = dense routing), `alpha`.

r1 down-vectors a_i and r2 up-vectors b_j mix and match into r1·r2 rank-1 experts b_j·a_iᵀ; a router gives
logits over the pairs. Gates g_ij (top-k of a softmax, renormalised, or dense) are scaled to sum to
k_eff = top_k (dense: min(r1, r2)) and the update is (α/k_eff)·Σ_ij g_ij·b_j·(a_i·x) = (α/k_eff)·B·(Gᵀ·(A·x)):
with r1 = r2 = r and G = I this is exactly a rank-r LoRA. Top-k selection is ours; the reference is dense only.

The "intuition" prior (`intuition_clusters` > 0; adapters/intuition.py) adds instance-level knowledge: each
layer maps the instance's cluster affinities to pair logits and blends them with the token router's,
logits = (1 − λ)·router(x) + λ·prior_router(affinity), with λ = sigmoid(learned scalar), starting at 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mtft.adapters import intuition
from mtft.adapters.base import LowRankConfig, nearest_to_lora, register_adapter
from mtft.adapters.intuition import MODULE_NAME, IntuitionPrior
from mtft.adapters.moe import (
    ExpertLinear,
    ExpertsRuntime,
    LowRankIn,
    LowRankOut,
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
class MoR1EConfig(LowRankConfig):
    name: str = "mor1e"
    num_down: int = 8
    num_up: int = 8
    top_k: int = 8  # 0: dense routing over all r1·r2 pairs
    intuition_clusters: int = 0  # k-means clusters of the instance prior; 0 routes on the token alone
    intuition_layer: int = -1  # which hidden layer of the base model embeds an instance
    matrix_variants: ClassVar[tuple[dict, ...]] = ({"top_k": 0},)  # dense routing: float loads, no top-k
    run_variants: ClassVar[tuple[dict, ...]] = ({"intuition_clusters": 4},)  # the prior, fitted on the tasks

    @classmethod
    def at_lora_budget(
        cls, rank: int, alpha: float, shapes: list[tuple[int, int]], settings: dict[str, Any] | None = None
    ) -> MoR1EConfig | None:
        """r1 and r2 within a factor of 2.5 of each other (the update's rank is at most min(r1, r2): a lopsided
        pair buys experts, not rank; 2.5, not 2, so that the prior's parameters still leave one within the
        tolerance at LoRA r16 on SmolLM2-135M: 3 × 7) whose parameters (A, B, the r1·r2-wide router and, with
        `settings`, the prior) are nearest LoRA's; top-8."""
        candidates = (
            cls(num_down=down, num_up=up, top_k=min(8, down * up), alpha=alpha)
            for down in range(1, 3 * rank + 1)
            for up in range(-(-2 * down // 5), min(5 * down // 2, 3 * rank) + 1)
        )
        return nearest_to_lora(candidates, rank, shapes, settings)

    def layer_parameters(self, in_features: int, out_features: int) -> int:
        pairs = self.num_down * self.num_up
        experts = self.num_down * in_features + out_features * self.num_up + pairs * in_features  # A, B; router
        return experts + (pairs * self.intuition_clusters + 1 if self.intuition_clusters else 0)  # prior; its λ

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.intuition_clusters >= 0, "intuition_clusters", f"must be >= 0, got {self.intuition_clusters}")
        check(self.num_down > 0, "num_down", f"must be > 0, got {self.num_down}")
        check(self.num_up > 0, "num_up", f"must be > 0, got {self.num_up}")
        pairs = self.num_down * self.num_up
        check(0 <= self.top_k <= pairs, "top_k", f"must be in [0, {pairs}] (0 = dense), got {self.top_k}")


class PairGates(torch.autograd.Function):
    """Gᵀ·h for h = A·x (r1 down-vectors) and G (r1 × r2) the gates over the pairs: the renormalised top-k of
    p = softmax(logits) (fp32), or p itself when k = 0 (dense). Both sum to 1, so (α/k_eff)·(k_eff·G) = α·G and
    the caller scales by α. Also returns what the loads count (not differentiable): the top-k mask, or p.

    Backward: either gate is a softmax (over the chosen pairs, or over all), so dL/dlogits is one softmax backward
    of dL/dG = h ⊗ dL/d(Gᵀ·h)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, logits: torch.Tensor, shape: tuple[int, int], k: int):
        probs = torch.softmax(logits, -1, dtype=routing_dtype(logits))
        chosen = gates = probs
        if k:
            chosen = top_k_mask(probs, k)
            weights = chosen * probs
            gates = weights / weights.sum(-1, keepdim=True)
        pair_gates = cast(gates, hidden.dtype).unflatten(-1, shape)
        ctx.save_for_backward(hidden, gates, pair_gates)
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(chosen)
        ctx.set_materialize_grads(False)
        return torch.einsum("...ij,...i->...j", pair_gates, hidden), chosen

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, _):
        if grad is None:
            return None, None, None, None
        hidden, gates, pair_gates = ctx.saved_tensors
        grad_pairs = torch.einsum("...j,...i->...ij", grad, hidden).flatten(-2)
        grad_hidden = torch.einsum("...ij,...j->...i", pair_gates, grad)
        return grad_hidden, softmax_backward(grad_pairs, gates, ctx.logits_dtype), None, None


class PriorBlend(torch.autograd.Function):
    """(1 − λ)·z + λ·z_prior = z + λ·(z_prior − z), λ = sigmoid(θ): the token router's logits z blended with the
    instance prior's. Backward in four ops (autograd's, through the lerp and the sigmoid: eleven)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, prior_logits: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        weight = torch.sigmoid(mix)
        difference = prior_logits - logits
        ctx.save_for_backward(difference, weight)
        return torch.addcmul(logits, difference, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        difference, weight = ctx.saved_tensors
        grad_prior = grad * weight
        grad_mix = torch.ops.aten.sigmoid_backward(torch.einsum("...,...->", grad, difference), weight)
        return grad - grad_prior, grad_prior, grad_mix


class PriorRouter(nn.Linear):
    """The prior's pair logits W_p·affinity: an nn.Linear child (its state-dict key, and ZeRO-3 gathers its weight
    for its own forward) with LowRankOut's backward, one product, as the affinity takes no gradient (autograd's,
    through nn.Linear: six)."""

    def forward(self, affinity: torch.Tensor) -> torch.Tensor:
        return LowRankOut.apply(affinity, self.weight)


class MoR1ELinear(ExpertLinear):
    def __init__(self, base: nn.Linear, cfg: MoR1EConfig, prior: IntuitionPrior | None = None):
        super().__init__(base, cfg.num_down * cfg.num_up, cfg.dropout)
        self.lora_A, self.lora_B = lora_pair(cfg.num_down, cfg.num_up, base.in_features, base.out_features)
        self.shape = (cfg.num_down, cfg.num_up)
        self.top_k = cfg.top_k
        self.scaling = cfg.alpha  # (α/k_eff)·k_eff, k_eff = top_k (dense: min(r1, r2)): the gates sum to 1
        self.prior_source = [prior] if prior is not None else []  # a list: shared by all layers, not a submodule
        if prior is not None:
            self.prior_mix = nn.Parameter(torch.zeros(1))  # 1-d: DeepSpeed broadcasts parameters as bytes
        self.router_weight = init_router(cfg.num_down * cfg.num_up, base.in_features)  # after prior_mix, as before
        if prior is not None:
            self.prior_router = PriorRouter(cfg.intuition_clusters, cfg.num_down * cfg.num_up, bias=False)
            nn.init.normal_(self.prior_router.weight, std=cfg.intuition_clusters**-0.5)

    def routing_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The token router's logits, blended with the instance prior's if there is one."""
        if not self.prior_source:
            return logits
        affinity = self.prior_source[0].current_in(logits.dtype)
        if affinity is None:
            raise RuntimeError("MoR1E with an intuition prior needs it set first: mtft.adapters.intuition.prior_for")
        return PriorBlend.apply(logits, self.prior_router(affinity), self.prior_mix)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        hidden, logits = LowRankIn.apply(x, self.lora_A, self.router_weight)
        mixed, chosen = PairGates.apply(hidden, self.routing_logits(logits), self.shape, self.top_k)
        if self.top_k:
            self.record_load(chosen)
        else:
            self.record_mass(chosen)
        return LowRankOut.apply(mixed, self.lora_B)


def inject(model: nn.Module, cfg: MoR1EConfig) -> nn.Module:
    prior = None
    if cfg.intuition_clusters:
        prior = IntuitionPrior(cfg.intuition_clusters, model.config.hidden_size, cfg.intuition_layer)
    model = inject_experts(model, cfg, lambda linear: MoR1ELinear(linear, cfg, prior))
    if prior is not None:
        model.add_module(MODULE_NAME, prior)
    return model


def runtime(model: nn.Module, cfg: MoR1EConfig) -> ExpertsRuntime:
    return intuition.PriorRuntime(model) if cfg.intuition_clusters else ExpertsRuntime(model)


register_adapter("mor1e", experts_method(MoR1EConfig, inject, runtime))
