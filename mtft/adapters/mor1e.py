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

import torch
import torch.nn.functional as F
from torch import nn

from mtft.adapters import intuition
from mtft.adapters.base import LowRankConfig
from mtft.adapters.intuition import MODULE_NAME, IntuitionPrior
from mtft.adapters.moe import ExpertLinear, ExpertsRuntime, inject_experts, lora_pair, top_k_mask
from mtft.errors import check


@dataclass
class MoR1EConfig(LowRankConfig):
    name: str = "mor1e"
    num_down: int = 8
    num_up: int = 8
    top_k: int = 8  # 0: dense routing over all r1·r2 pairs
    intuition_clusters: int = 0  # k-means clusters of the instance prior; 0 routes on the token alone
    intuition_layer: int = -1  # which hidden layer of the base model embeds an instance

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.intuition_clusters >= 0, "intuition_clusters", f"must be >= 0, got {self.intuition_clusters}")
        check(self.num_down > 0, "num_down", f"must be > 0, got {self.num_down}")
        check(self.num_up > 0, "num_up", f"must be > 0, got {self.num_up}")
        pairs = self.num_down * self.num_up
        check(0 <= self.top_k <= pairs, "top_k", f"must be in [0, {pairs}] (0 = dense), got {self.top_k}")


class MoR1ELinear(ExpertLinear):
    def __init__(self, base: nn.Linear, cfg: MoR1EConfig, prior: IntuitionPrior | None = None):
        super().__init__(base, cfg.num_down * cfg.num_up, cfg.dropout)
        self.lora_A, self.lora_B = lora_pair(cfg.num_down, cfg.num_up, base.in_features, base.out_features)
        self.router = nn.Linear(base.in_features, cfg.num_down * cfg.num_up, bias=False)
        nn.init.normal_(self.router.weight, std=base.in_features**-0.5)
        self.shape = (cfg.num_down, cfg.num_up)
        self.top_k = cfg.top_k
        self.k_eff = cfg.top_k or min(cfg.num_down, cfg.num_up)
        self.scaling = cfg.alpha / self.k_eff
        self.prior_source = [prior] if prior is not None else []  # a list: shared by all layers, not a submodule
        if prior is not None:
            self.prior_router = nn.Linear(cfg.intuition_clusters, cfg.num_down * cfg.num_up, bias=False)
            nn.init.normal_(self.prior_router.weight, std=cfg.intuition_clusters**-0.5)
            self.prior_mix = nn.Parameter(torch.zeros(1))  # 1-d: DeepSpeed broadcasts parameters as bytes

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if not self.prior_source:
            return self.router(x)
        affinity = self.prior_source[0].current
        if affinity is None:
            raise RuntimeError("MoR1E with an intuition prior needs it set first: mtft.adapters.intuition.prior_for")
        mix = torch.sigmoid(self.prior_mix)
        return (1 - mix) * self.router(x) + mix * self.prior_router(affinity.to(x.dtype))

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.logits(x).float(), dim=-1)
        if not self.top_k:
            self.record_load(probs)
            return self.k_eff * probs
        chosen = top_k_mask(probs.detach(), self.top_k)
        self.record_load(chosen)
        gates = chosen * probs
        return self.k_eff * gates / gates.sum(-1, keepdim=True)

    def update(self, x: torch.Tensor) -> torch.Tensor:
        gates = (self.scaling * self.gates(x)).to(x.dtype).unflatten(-1, self.shape)  # (..., r1, r2); α/k_eff here
        mixed = torch.einsum("...ij,...i->...j", gates, F.linear(x, self.lora_A))
        return F.linear(mixed, self.lora_B)


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
