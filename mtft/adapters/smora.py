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

import torch
import torch.nn.functional as F
from torch import nn

from mtft.adapters.base import LowRankConfig
from mtft.adapters.moe import ExpertLinear, inject_experts, lora_pair, top_k_mask
from mtft.errors import check


@dataclass
class SMoRAConfig(LowRankConfig):
    name: str = "smora"
    rank: int = 16
    top_k: int = 4
    bias_update_rate: float = 1e-3  # 0 turns balancing off

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rank > 0, "rank", f"must be > 0, got {self.rank}")
        check(0 < self.top_k <= self.rank, "top_k", f"must be in [1, rank={self.rank}], got {self.top_k}")
        check(self.bias_update_rate >= 0, "bias_update_rate", f"must be >= 0, got {self.bias_update_rate}")


class SMoRALinear(ExpertLinear):
    def __init__(self, base: nn.Linear, cfg: SMoRAConfig):
        super().__init__(base, cfg.rank, cfg.dropout)
        self.lora_A, self.lora_B = lora_pair(cfg.rank, cfg.rank, base.in_features, base.out_features)
        self.router = nn.Linear(base.in_features, cfg.rank, bias=False)
        nn.init.normal_(self.router.weight, std=base.in_features**-0.5)
        self.register_buffer("rank_bias", torch.zeros(cfg.rank))  # persistent: saved and restored
        self.top_k, self.scaling, self.rate = cfg.top_k, cfg.alpha / cfg.top_k, cfg.bias_update_rate

    def update(self, x: torch.Tensor) -> torch.Tensor:
        scores = torch.sigmoid(self.router(x))
        active = top_k_mask(scores.detach().float() + self.rank_bias, self.top_k).to(scores.dtype)
        self.record_load(active)
        gates = active * scores
        # α/k folded into the (tokens × r) gates rather than applied to the (tokens × out) update: one pass less
        gates = (self.top_k * self.scaling) * gates / gates.sum(-1, keepdim=True).clamp_min(1e-9)
        return F.linear(gates * F.linear(x, self.lora_A), self.lora_B)

    @torch.no_grad()
    def after_optimizer_step(self, step_load: torch.Tensor) -> None:
        if self.rate > 0 and step_load.sum() > 0:  # balance from real tokens only: padding counts no load
            self.rank_bias += self.rate * torch.sign(step_load.mean() - step_load)
        super().after_optimizer_step(step_load)


def inject(model: nn.Module, cfg: SMoRAConfig) -> nn.Module:
    return inject_experts(model, cfg, lambda linear: SMoRALinear(linear, cfg))
