"""`torchrun ... tests/integration/starve_expert.py OVERRIDES`: mtft-train with SMoRA, except that on rank 1
expert 0 of every layer can never be chosen. Under ZeRO-3 a parameter used on one rank but not another breaks
the collectives, so the run finishing shows mtft's experts are safe. Writes `starved.txt` (rank 1's count of
routing calls that left expert 0 out) into the working directory."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mtft.adapters import smora
from mtft.cli.train import main

calls = 0


def without_expert_zero(scores: torch.Tensor, k: int) -> torch.Tensor:
    global calls
    scores = scores.clone()
    scores[..., 0] = float("-inf")
    mask = torch.zeros_like(scores).scatter_(-1, scores.topk(k, dim=-1).indices, 1.0)
    calls += int(mask[..., 0].sum() == 0)
    return mask


if __name__ == "__main__":
    if os.environ["RANK"] == "1":
        smora.top_k_mask = without_expert_zero
    try:
        main()
    finally:
        if os.environ["RANK"] == "1":
            Path("starved.txt").write_text(str(calls))
