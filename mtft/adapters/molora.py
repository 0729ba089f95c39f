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

import torch
import torch.nn.functional as F
from torch import nn

from mtft.adapters.base import LowRankConfig
from mtft.adapters.moe import ExpertLinear, inject_experts, lora_pair, top_k_mask
from mtft.errors import check


@dataclass
class MoLoRAConfig(LowRankConfig):
    name: str = "molora"
    num_experts: int = 4
    expert_rank: int = 4
    top_k: int = 2
    aux_loss_coef: float = 0.01  # 0 turns the balancing loss off

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.num_experts > 0, "num_experts", f"must be > 0, got {self.num_experts}")
        check(self.expert_rank > 0, "expert_rank", f"must be > 0, got {self.expert_rank}")
        check(0 < self.top_k <= self.num_experts, "top_k", f"must be in [1, num_experts], got {self.top_k}")
        check(self.aux_loss_coef >= 0, "aux_loss_coef", f"must be >= 0, got {self.aux_loss_coef}")


class MoLoRALinear(ExpertLinear):
    def __init__(self, base: nn.Linear, cfg: MoLoRAConfig):
        super().__init__(base, cfg.num_experts, cfg.dropout)
        width = cfg.num_experts * cfg.expert_rank
        self.lora_A, self.lora_B = lora_pair(width, width, base.in_features, base.out_features)
        self.router = nn.Linear(base.in_features, cfg.num_experts, bias=False)
        nn.init.normal_(self.router.weight, std=base.in_features**-0.5)
        self.expert_rank, self.top_k = cfg.expert_rank, cfg.top_k
        self.scaling, self.aux_coef = cfg.alpha / cfg.expert_rank, cfg.aux_loss_coef

    def update(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.router(x).float(), dim=-1)
        chosen = top_k_mask(probs.detach(), self.top_k)
        self.record_load(chosen)
        gates = chosen * probs
        gates = (self.scaling * gates / gates.sum(-1, keepdim=True)).to(x.dtype)  # α/r_e here: (tokens × E), small
        if self.training and self.aux_coef > 0:
            aux = self.switch_loss(probs, chosen)  # also when recomputing: a checkpointed rerun saves the same tensors
            if not self.recomputing:
                self.aux_loss = aux
        hidden = F.linear(x, self.lora_A).unflatten(-1, (self.num_experts, self.expert_rank))
        return F.linear((hidden * gates.unsqueeze(-1)).flatten(-2), self.lora_B)

    def switch_loss(self, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """coef · E · Σ_e f_e·P_e over the real tokens; `probs` (fp32) and `chosen` are (..., experts)."""
        tokens = self.real_token_count(probs)
        fraction = self.at_real_tokens(chosen).reshape(-1, self.num_experts).sum(0) / (tokens * self.top_k)
        mean_probs = self.at_real_tokens(probs).reshape(-1, self.num_experts).sum(0) / tokens
        return self.aux_coef * self.num_experts * (fraction * mean_probs).sum()


def inject(model: nn.Module, cfg: MoLoRAConfig) -> nn.Module:
    return inject_experts(model, cfg, lambda linear: MoLoRALinear(linear, cfg))
