"""MoR1E's "intuition": an instance-level routing prior from semantic clusters (arXiv 2404.08985, sec. 3.2).

Before training, every sample is embedded once by the frozen base model (the masked mean of one layer's hidden
states) and k-means groups the training embeddings into `clusters` centroids. A sample's prior is its soft
affinity to the centroids, softmax(−‖e − c_k‖² / τ), with τ the mean squared distance of training embeddings to
their nearest centroid, so the temperature does not depend on the embedding's scale. Each MoR1E layer maps the
prior to logits over its expert pairs and blends them into its token router with a learned mixing weight.

The centroids live in the model (`mtft_intuition`) and are saved with the adapter, so a new input's prior is
computed the same way at inference: `prior_for(model, input_ids, attention_mask)`.
"""

from __future__ import annotations

import torch
from torch import nn

from mtft.adapters.moe import PRIOR_MODULE, base_only
from mtft.data.collate import collate, model_inputs
from mtft.data.tasks import TaskData

MODULE_NAME = PRIOR_MODULE


class IntuitionPrior(nn.Module):
    def __init__(self, clusters: int, hidden_size: int, layer: int):
        super().__init__()
        self.layer = layer
        self.register_buffer("centroids", torch.zeros(clusters, hidden_size))
        self.register_buffer("temperature", torch.ones(1))
        self.current: torch.Tensor | None = None  # the batch's per-token prior (..., clusters), set before forward

    def affinities(self, embeddings: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(embeddings.float(), self.centroids.float()) ** 2
        return torch.softmax(-distances / self.temperature, dim=-1)

    def fit(self, embeddings: torch.Tensor, seed: int, iterations: int = 25) -> None:
        centroids = kmeans(embeddings.float(), len(self.centroids), seed, iterations)
        nearest = (torch.cdist(embeddings.float(), centroids) ** 2).min(dim=1).values
        self.centroids.copy_(centroids)
        self.temperature.fill_(float(nearest.mean().clamp_min(1e-6)))


def kmeans(points: torch.Tensor, k: int, seed: int, iterations: int) -> torch.Tensor:
    """Lloyd's algorithm from a k-means++ start; seeded, so the same data gives the same centroids."""
    generator = torch.Generator().manual_seed(seed)
    k = min(k, len(points))
    centroids = points[torch.randint(len(points), (1,), generator=generator)]
    while len(centroids) < k:
        weights = (torch.cdist(points, centroids) ** 2).min(dim=1).values
        weights = weights if weights.sum() > 0 else torch.ones(len(points))  # all points already centroids
        centroids = torch.cat([centroids, points[torch.multinomial(weights, 1, generator=generator)]])
    for _ in range(iterations):
        assignment = torch.cdist(points, centroids).argmin(dim=1)
        for c in range(k):
            members = points[assignment == c]
            if len(members):
                centroids[c] = members.mean(dim=0)
    return centroids


@torch.no_grad()
def embed(model: nn.Module, batch: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """Masked mean of hidden layer `layer` of the base model (adapters bypassed): one vector per row."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    with base_only(model):
        hidden = model(**model_inputs(batch), output_hidden_states=True).hidden_states[layer]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


def prepare(model: nn.Module, tasks: list[TaskData], pad_token_id: int, seed: int, batch_size: int = 64) -> None:
    """Fit the centroids on the training samples and give every sample (train and validation) its prior."""
    prior: IntuitionPrior = getattr(model, MODULE_NAME)
    was_training = model.training
    model.eval()
    embeddings = {}
    for split in ("train", "val"):
        samples = [s for task in tasks for s in getattr(task, split)]
        chunks = [samples[i : i + batch_size] for i in range(0, len(samples), batch_size)]
        embeddings[split] = torch.cat([embed(model, collate(c, pad_token_id), prior.layer) for c in chunks])
    prior.fit(embeddings["train"], seed)
    for split, vectors in embeddings.items():
        samples = [s for task in tasks for s in getattr(task, split)]
        for sample, affinity in zip(samples, prior.affinities(vectors).tolist(), strict=True):
            sample.prior = affinity
    model.train(was_training)


def prior_for(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
    """At inference: compute a new input's prior from the saved centroids and set it for the next forward."""
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    prior: IntuitionPrior = getattr(model, MODULE_NAME)
    vectors = embed(model, {"input_ids": input_ids, "attention_mask": attention_mask}, prior.layer)
    set_instance_prior(model, prior.affinities(vectors).unsqueeze(1).expand(-1, input_ids.shape[1], -1))


def set_instance_prior(model: nn.Module, prior: torch.Tensor | None) -> None:
    """Hand the batch's per-token prior to the routers; a no-op for models without an intuition prior."""
    module = getattr(model, MODULE_NAME, None)
    if module is not None:
        module.current = prior
