"""MoR1E's intuition prior: k-means over base-model embeddings, the same prior at training and inference."""

from __future__ import annotations

import collections

import pytest
import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.intuition import MODULE_NAME, kmeans, set_instance_prior
from mtft.adapters.moe import expert_layers
from mtft.adapters.mor1e import MoR1EConfig
from mtft.data.collate import collate
from mtft.data.tasks import load_tasks
from mtft.models import load_model_and_tokenizer
from tests.helpers import compose_config, small_data_overrides


def test_kmeans_finds_separated_blobs():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + torch.randn(50, 2, generator=generator) for c in centers])
    found = kmeans(points, 3, seed=1, iterations=20)
    distances = torch.cdist(centers, found)
    assert distances.min(dim=1).values.max() < 0.5  # every true center has a centroid next to it
    assert torch.equal(found, kmeans(points, 3, seed=1, iterations=20))  # seeded


@pytest.fixture
def prepared(small_tasks):
    cfg = compose_config([*small_data_overrides(small_tasks), "adapter=mor1e", "adapter.intuition_clusters=2"])
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    tasks = load_tasks(cfg.data, tokenizer, seed=0)
    torch.manual_seed(0)
    model = ADAPTERS["mor1e"].inject(model, cfg.adapter)
    ADAPTERS["mor1e"].runtime(model, cfg.adapter).prepare(model, tasks, tokenizer.pad_token_id, 0)
    return model.eval(), tasks, tokenizer


def test_clusters_separate_the_tasks_and_every_sample_has_a_prior(prepared):
    _, tasks, _ = prepared
    dominant = {}
    for task in tasks:
        assert all(s.prior is not None and abs(sum(s.prior) - 1) < 1e-5 for s in task.train + task.val)
        counts = collections.Counter(max(range(2), key=s.prior.__getitem__) for s in task.train)
        assert len(counts) == 1  # one cluster per task: add and sentiment prompts look nothing alike
        dominant[task.name] = next(iter(counts))
    assert dominant["add"] != dominant["sentiment"]


def test_the_training_prior_is_what_generation_computes_from_the_prompt_alone(small_tasks):
    """The stored prior (used in training and validation) is what the runtime's `before_generate` gives from the
    prompt alone, left-padded in a batch as generation pads it: the answer never shapes it. Four clusters keep the
    affinities soft enough that an embedding of prompt and answer together would give a measurably different prior."""
    cfg = compose_config([*small_data_overrides(small_tasks), "adapter=mor1e", "adapter.intuition_clusters=4"])
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    tasks = load_tasks(cfg.data, tokenizer, seed=0)
    model = ADAPTERS["mor1e"].inject(model, cfg.adapter)
    runtime = ADAPTERS["mor1e"].runtime(model, cfg.adapter)
    runtime.prepare(model, tasks, tokenizer.pad_token_id, 0)
    model.eval()

    def generation_priors(prompts: list[list[int]]) -> torch.Tensor:
        width = max(map(len, prompts))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        runtime.before_generate({"input_ids": input_ids, "attention_mask": attention_mask})
        current = getattr(model, MODULE_NAME).current
        assert current.shape == (len(prompts), 1, 4)  # one prior a prompt, for every position generated
        return current[:, 0]

    samples = [s for task in tasks for s in task.train[:6] + task.val[:6]]
    assert all(0 < len(s.prompt()) < len(s.input_ids) for s in samples)  # a real prompt, then the answer
    stored = torch.tensor([s.prior for s in samples])
    torch.testing.assert_close(generation_priors([s.prompt() for s in samples]), stored, atol=1e-5, rtol=0)
    gaps = (generation_priors([s.input_ids for s in samples]) - stored).abs().max()
    assert gaps > 1e-3  # prompt and answer together would route differently


def test_kmeans_draws_on_the_points_device(monkeypatch):
    """The generator lives on the data's device: a CPU generator with CUDA points crashed torch.multinomial."""
    made = []
    real_generator = torch.Generator

    def recording_generator(*args, **kwargs):
        made.append(kwargs.get("device"))
        return real_generator(*args, **kwargs)

    monkeypatch.setattr(torch, "Generator", recording_generator)
    points = torch.randn(20, 3)
    kmeans(points, 3, seed=0, iterations=2)
    assert made == [points.device]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kmeans_runs_on_cuda():
    points = torch.randn(200, 8, device="cuda")
    centroids = kmeans(points, 4, seed=0, iterations=5)
    assert centroids.device.type == "cuda" and torch.equal(centroids, kmeans(points, 4, seed=0, iterations=5))


def test_the_prior_steers_routing(prepared):
    model, tasks, tokenizer = prepared
    for layer in expert_layers(model).values():
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    ids = collate([tasks[0].train[0]], tokenizer.pad_token_id, multiple_of=1)["input_ids"]
    outputs = []
    for affinity in ([1.0, 0.0], [0.0, 1.0]):
        set_instance_prior(model, torch.tensor(affinity).expand(1, ids.shape[1], 2))
        with torch.no_grad():
            outputs.append(model(input_ids=ids).logits)
    assert (outputs[0] - outputs[1]).abs().max() > 1e-4
    set_instance_prior(model, None)
    with pytest.raises(RuntimeError, match="needs it set first"):
        model(input_ids=ids)


def test_without_clusters_there_is_no_prior():
    cfg = MoR1EConfig()
    assert cfg.intuition_clusters == 0
    model, _ = load_model_and_tokenizer(compose_config().model)
    model = ADAPTERS["mor1e"].inject(model, cfg)
    assert not hasattr(model, MODULE_NAME)
    assert all(not hasattr(layer, "prior_router") for layer in expert_layers(model).values())


def test_ranks_share_the_prompt_embeddings(prepared, monkeypatch):
    """Two ranks (simulated: the sum over ranks is done by hand) embed disjoint batches, run the same number of
    forwards (ZeRO-3's forwards are collective), and together give exactly the one-process embeddings."""
    import mtft.adapters.intuition as intuition

    model, tasks, tokenizer = prepared
    prompts = [s.prompt() for s in tasks[0].train[:20]]
    alone = intuition.embed_prompts(model, prompts, tokenizer.pad_token_id, -1, batch_size=3)  # 7 batches

    forwards = {0: 0, 1: 0}
    real_embed = intuition.embed
    parts = []
    for rank in (0, 1):

        def counting_embed(*args, rank=rank, **kwargs):
            forwards[rank] += 1
            return real_embed(*args, **kwargs)

        fake_dist = type("FakeDist", (), {"is_initialized": staticmethod(lambda: True)})
        fake_dist.get_rank, fake_dist.get_world_size = staticmethod(lambda r=rank: r), staticmethod(lambda: 2)
        monkeypatch.setattr(intuition, "dist", fake_dist)
        monkeypatch.setattr(intuition, "embed", counting_embed)
        monkeypatch.setattr(intuition, "all_reduce_sum", lambda tensor: tensor)  # this rank's share only
        parts.append(intuition.embed_prompts(model, prompts, tokenizer.pad_token_id, -1, batch_size=3))
    assert forwards == {0: 4, 1: 4}  # 7 batches over 2 ranks: rank 1's fourth forward is a discarded filler
    filled = [set(part.abs().sum(1).nonzero().flatten().tolist()) for part in parts]
    assert filled[0].isdisjoint(filled[1]) and filled[0] | filled[1] == set(range(20))
    torch.testing.assert_close(parts[0] + parts[1], alone, atol=1e-6, rtol=0)
