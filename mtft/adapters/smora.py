"""SMoRA: every rank of one LoRA is an expert ("Each Rank Could be an Expert", arXiv 2501.15103).

Hyperparameters: `rank` r (experts), `top_k` k (active ranks per token), `alpha`, `bias_update_rate`.

Per token: scores s = sigmoid(W_g·x) over the r ranks; the k ranks with the highest s + b are active, where b is a
per-rank bias that is not trained. Active gates are normalised to sum to k, g_i = k·s_i / Σ_active s_j, and the
update is (α/k)·B·(g ⊙ A·x): with equal gates, k active ranks act as a rank-k LoRA (and k = r is LoRA itself).

Load balancing without an auxiliary loss: after each optimizer step, b_i += rate·sign(mean load − load_i), from
the loads of that step summed over ranks, so every data-parallel rank keeps the same biases.
Deviation (as DeepSeek-V3's bias balancing, which SMoRA adopts): the bias steers selection only and never enters
the gate value, so balancing does not change what the selected ranks compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mtft.adapters.base import LowRankConfig, nearest_to_lora, register_adapter
from mtft.adapters.moe import (
    ExpertLinear,
    LowRankIn,
    LowRankOut,
    cast,
    experts_method,
    init_router,
    inject_experts,
    lora_pair,
    routing_dtype,
    top_k_mask,  # looked up in this module at each forward: tests/integration/starve_expert.py replaces it
)
from mtft.errors import check

EPS = 1e-9  # floor of Σ active scores: no division by zero when every active sigmoid underflows


@dataclass
class SMoRAConfig(LowRankConfig):
    name: str = "smora"
    rank: int = 16
    top_k: int = 4
    bias_update_rate: float = 1e-3  # 0 turns balancing off

    @classmethod
    def at_lora_budget(
        cls, rank: int, alpha: float, shapes: list[tuple[int, int]], settings: dict[str, Any] | None = None
    ) -> SMoRAConfig | None:
        """The rank whose parameters (A, B and the rank-wide router) are nearest LoRA's, about an eighth of it
        active per token, and at least two (one active rank would make each token's update a single direction).
        Each rank costs 2·in + out per Linear, LoRA's in + out: at LoRA r4 the step is too coarse for some shapes
        (SmolLM2-135M's: r3 is +12%, r2 −25%)."""
        ranks = range(1, rank + 1)
        candidates = (cls(rank=r, top_k=min(r, max(2, (r + 4) // 8)), alpha=alpha) for r in ranks)
        return nearest_to_lora(candidates, rank, shapes, settings)

    def layer_parameters(self, in_features: int, out_features: int) -> int:
        return self.rank * (in_features + out_features) + self.rank * in_features  # A, B; the router

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank > 0, "rank", f"must be > 0, got {self.rank}")
        check(0 < self.top_k <= self.rank, "top_k", f"must be in [1, rank={self.rank}], got {self.top_k}")
        check(self.bias_update_rate >= 0, "bias_update_rate", f"must be >= 0, got {self.bias_update_rate}")


def selection_scores(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """s + b in the routing dtype: one add where the biases are in it (they are fp32 buffers, which DeepSpeed's
    bf16 engine does not cast), since the add promotes bf16 scores by itself."""
    dtype = routing_dtype(scores)
    return scores + bias if bias.dtype == dtype else cast(scores, dtype) + bias


class RankGates(torch.autograd.Function):
    """α·g ⊙ h for h = A·x and the gates normalised to sum to 1, g_i = m_i·s_i / max(Σ_j m_j·s_j, EPS) with
    s = sigmoid(logits) and m the top-k of s + b; (α/k)·(k·g) = α·g. α rides in the (tokens × r) gates, so the
    layer's add needs no scaling and its backward no (tokens × out) product. Also returns m (not differentiable)
    for the loads.

    Backward, by the quotient rule: with d = dL/dg, dL/ds_j = m_j·(d_j − Σ_i d_i·g_i) / max(Σ, EPS), the sum term
    dropped where the floor holds (its derivative is 0 there), then through the sigmoid. With the saved gates and
    share both times α, the sum term is divided by α once."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, logits: torch.Tensor, bias: torch.Tensor, k: int, alpha: float):
        scores = torch.sigmoid(logits)
        chosen = top_k_mask(selection_scores(scores, bias), k)
        active = cast(chosen, scores.dtype)
        total = (active * scores).sum(-1, keepdim=True)
        share = active / total.clamp_min(EPS).div_(alpha)
        gates = share * scores
        ctx.save_for_backward(hidden, scores, gates, share, total >= EPS)
        ctx.alpha = alpha
        ctx.mark_non_differentiable(chosen)
        ctx.set_materialize_grads(False)
        return gates * hidden, chosen

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None, _):
        if grad is None:
            return None, None, None, None, None
        hidden, scores, gates, share, unfloored = ctx.saved_tensors
        grad_gates = grad * hidden
        dot = (grad_gates * gates).sum(-1, keepdim=True)
        grad_scores = torch.addcmul(grad_gates, dot, unfloored, value=-1 / ctx.alpha) * share
        return grad * gates, torch.ops.aten.sigmoid_backward(grad_scores, scores), None, None, None


class SMoRALinear(ExpertLinear):
    def __init__(self, base: nn.Linear, cfg: SMoRAConfig):
        super().__init__(base, cfg.rank, cfg.dropout)
        self.lora_A, self.lora_B = lora_pair(cfg.rank, cfg.rank, base.in_features, base.out_features)
        self.router_weight = init_router(cfg.rank, base.in_features)
        self.register_buffer("rank_bias", torch.zeros(cfg.rank))  # persistent: saved and restored
        self.top_k, self.alpha, self.rate = cfg.top_k, cfg.alpha, cfg.bias_update_rate

    def update(self, x: torch.Tensor) -> torch.Tensor:
        hidden, logits = LowRankIn.apply(x, self.lora_A, self.router_weight)
        gated, chosen = RankGates.apply(hidden, logits, self.rank_bias, self.top_k, self.alpha)
        self.record_load(chosen)
        return LowRankOut.apply(gated, self.lora_B)

    @staticmethod
    @torch.no_grad()
    def apply_step_loads(layers: list[SMoRALinear], step_loads: torch.Tensor) -> None:
        """b_i += rate·sign(mean load − load_i), in five ops for all layers. A step with no real tokens has all
        loads 0, so every sign is 0 and no bias moves: padding counts no load."""
        ExpertLinear.apply_step_loads(layers, step_loads)
        rates = {layer.rate for layer in layers} - {0.0}
        if not rates:
            return
        moves = torch.sign(step_loads.mean(-1, keepdim=True) - step_loads).unbind(0)
        for rate in rates:
            members = [i for i, layer in enumerate(layers) if layer.rate == rate]
            torch._foreach_add_([layers[i].rank_bias for i in members], [moves[i] for i in members], alpha=rate)


def inject(model: nn.Module, cfg: SMoRAConfig) -> nn.Module:
    return inject_experts(model, cfg, lambda linear: SMoRALinear(linear, cfg))


register_adapter("smora", experts_method(SMoRAConfig, inject))
