"""MoR1E's intuition prior: k-means over base-model embeddings, the same prior at training and inference."""

from __future__ import annotations

import collections

import pytest
import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.intuition import MODULE_NAME, kmeans, prior_for, set_instance_prior
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
    ADAPTERS["mor1e"].prepare(model, cfg.adapter, tasks, tokenizer.pad_token_id, 0)
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


def test_inference_prior_equals_the_training_prior(prepared):
    model, tasks, tokenizer = prepared
    sample = tasks[1].val[0]
    batch = collate([sample], tokenizer.pad_token_id, multiple_of=1)
    prior_for(model, batch["input_ids"], batch["attention_mask"])
    current = getattr(model, MODULE_NAME).current
    assert current.shape == (1, len(sample.input_ids), 2)
    torch.testing.assert_close(current[0, 0], torch.tensor(sample.prior), atol=1e-5, rtol=0)


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
