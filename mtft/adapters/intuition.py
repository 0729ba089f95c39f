"""MoR1E's "intuition": an instance-level routing prior from semantic clusters (arXiv 2404.08985, sec. 3.2).

Before training, every sample's prompt (Sample.prompt: everything before the first assistant turn, never the
answer) is embedded once by the frozen base model (the masked mean of one layer's hidden states), the ranks
sharing the work, and k-means groups the training embeddings into `clusters` centroids. A sample's prior is its soft
affinity to the centroids, softmax(−‖e − c_k‖² / τ), with τ the mean squared distance of training embeddings to
their nearest centroid, so the temperature does not depend on the embedding's scale. Each MoR1E layer maps the
prior to logits over its expert pairs and blends them into its token router with a learned mixing weight.

The centroids live in the model (`mtft_intuition`) and are saved with the adapter, so a new input's prior is
computed the same way at inference from the prompt alone: the runtime's `before_generate(prompts)` (`prior_for`).
Training and validation use the prior stored on each sample, which equals `prior_for(sample.prompt())`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from mtft.adapters.moe import ExpertsRuntime, SharedLayerState, base_only
from mtft.distributed import all_reduce_sum
from mtft.models import eval_mode

MODULE_NAME = "mtft_intuition"  # the prior's attribute on the model, so its saved keys read `mtft_intuition.centroids`


class IntuitionPrior(SharedLayerState):
    """The centroids and temperature (saved with the adapter, as state every MoR1E layer shares), and the batch's
    prior, which the runtime (`PriorRuntime`) sets before each forward and before generating."""

    def __init__(self, clusters: int, hidden_size: int, layer: int):
        super().__init__()
        self.layer = layer
        self.register_buffer("centroids", torch.zeros(clusters, hidden_size))
        self.register_buffer("temperature", torch.ones(1))
        self.current: torch.Tensor | None = None  # the batch's per-token prior (..., clusters), set before forward
        self._cast: tuple[torch.Tensor, torch.Tensor] | None = None  # (current, it in the routers' dtype)

    def current_in(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The batch's prior in `dtype`: cast once for all the layers, not once in each."""
        current = self.current
        if current is None or current.dtype == dtype:
            return current
        if self._cast is None or self._cast[0] is not current or self._cast[1].dtype != dtype:
            self._cast = (current, current.to(dtype))
        return self._cast[1]

    def affinities(self, embeddings: torch.Tensor) -> torch.Tensor:
        distances = torch.cdist(embeddings.float(), self.centroids.float()) ** 2
        return torch.softmax(-distances / self.temperature, dim=-1)

    def fit(self, embeddings: torch.Tensor, seed: int, iterations: int = 25) -> None:
        centroids = kmeans(embeddings.float(), len(self.centroids), seed, iterations)
        nearest = (torch.cdist(embeddings.float(), centroids) ** 2).min(dim=1).values
        self.centroids.copy_(centroids)
        self.temperature.fill_(float(nearest.mean().clamp_min(1e-6)))


def kmeans(points: torch.Tensor, k: int, seed: int, iterations: int) -> torch.Tensor:
    """Lloyd's algorithm from a k-means++ start; seeded, so the same data gives the same centroids. Every random
    draw uses a generator on the points' own device (a CPU generator cannot drive a CUDA tensor)."""
    device = points.device
    generator = torch.Generator(device=device).manual_seed(seed)
    k = min(k, len(points))
    centroids = points[torch.randint(len(points), (1,), generator=generator, device=device)]
    while len(centroids) < k:
        weights = (torch.cdist(points, centroids) ** 2).min(dim=1).values
        weights = weights if weights.sum() > 0 else torch.ones(len(points), device=device)  # all are centroids
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
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        hidden = model(**inputs, output_hidden_states=True).hidden_states[layer]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)


def prepare(model: nn.Module, tasks: list, pad_token_id: int, seed: int, batch_size: int = 64) -> None:
    """Fit the centroids on the training prompts and give every sample (train and validation) its prior.
    `tasks`: the loop's TaskData, read only through `train`/`val` samples, each with `prompt()` token ids and a
    `prior` to set (the one per-sample routing input the data pipeline carries to the routers)."""
    prior: IntuitionPrior = getattr(model, MODULE_NAME)
    samples = {split: [s for task in tasks for s in getattr(task, split)] for split in ("train", "val")}
    with eval_mode(model):
        embeddings = {
            split: embed_prompts(model, [s.prompt() for s in group], pad_token_id, prior.layer, batch_size)
            for split, group in samples.items()
        }
    prior.fit(embeddings["train"], seed)
    for split, vectors in embeddings.items():
        for sample, affinity in zip(samples[split], prior.affinities(vectors).tolist(), strict=True):
            sample.prior = affinity


def assign_priors(model: nn.Module, samples: list, pad_token_id: int, batch_size: int = 64) -> None:
    """Give each sample its prior from the centroids the model already holds (trained and saved), as at inference."""
    prior: IntuitionPrior = getattr(model, MODULE_NAME)
    with eval_mode(model):
        vectors = embed_prompts(model, [s.prompt() for s in samples], pad_token_id, prior.layer, batch_size)
    for sample, affinity in zip(samples, prior.affinities(vectors).tolist(), strict=True):
        sample.prior = affinity


def embed_prompts(model: nn.Module, prompts: list[list[int]], pad_token_id: int, layer: int, batch_size: int):
    """(prompts, hidden) embeddings of the prompts' token ids, every rank getting all of them. Rank r embeds
    batches r, r + W, ...; every rank runs the same number of forwards (ZeRO-3's are collective), then one sum
    over ranks puts each embedding everywhere."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    starts = range(0, len(prompts), batch_size)
    rounds = -(-len(starts) // world)
    out = None
    for turn in range(rounds):
        index = turn * world + rank
        start = starts[index] if index < len(starts) else 0  # no batch left for this rank: a discarded forward
        vectors = embed(model, right_padded(prompts[start : start + batch_size], pad_token_id), layer)
        if out is None:
            out = vectors.new_zeros(len(prompts), vectors.shape[-1])
        if index < len(starts):
            out[start : start + len(vectors)] = vectors
    return all_reduce_sum(out)


def right_padded(prompts: list[list[int]], pad_token_id: int, multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Token id lists as one batch, right-padded to the longest rounded up to `multiple_of`, as training's batches."""
    width = -(-max(len(p) for p in prompts) // multiple_of) * multiple_of
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, : len(prompt)] = torch.tensor(prompt)
        attention_mask[row, : len(prompt)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def prior_for(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> None:
    """At inference: compute the prior of each prompt (everything before the answer, as Sample.prompt) from the
    saved centroids and set it for the next forward. Prompts padded on either side are embedded right-padded, as
    training embedded them (a left pad would shift their positions)."""
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    prompts = [row[mask.bool()].tolist() for row, mask in zip(input_ids.cpu(), attention_mask.cpu(), strict=True)]
    prior: IntuitionPrior = getattr(model, MODULE_NAME)
    vectors = embed(model, right_padded(prompts, pad_token_id=0), prior.layer)  # the pad id: masked out
    set_instance_prior(model, prior.affinities(vectors).unsqueeze(1))  # (prompts, 1, clusters): every position


def set_instance_prior(model: nn.Module, prior: torch.Tensor | None) -> None:
    """Hand the batch's per-token prior to the routers; a no-op for models without an intuition prior."""
    module = getattr(model, MODULE_NAME, None)
    if module is not None:
        module.current = prior


class PriorRuntime(ExpertsRuntime):
    """MoR1E with its intuition prior: fitted before training; each batch's per-token prior goes to the routers;
    before generating, each prompt's prior is computed from the prompt."""

    routes_on_the_prompt = True

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.model = model

    def prepare(self, model: nn.Module, tasks: list, pad_token_id: int, seed: int) -> None:
        prepare(model, tasks, pad_token_id, seed)

    def prepare_inference(self, model: nn.Module, tasks: list, pad_token_id: int) -> None:
        assign_priors(model, [s for task in tasks for split in (task.train, task.val) for s in split], pad_token_id)

    def before_forward(self, batch: dict[str, torch.Tensor]) -> None:
        super().before_forward(batch)
        set_instance_prior(self.model, batch.get("instance_prior"))

    def before_generate(self, prompts: dict[str, torch.Tensor]) -> None:
        prior_for(self.model, prompts["input_ids"], prompts["attention_mask"])
