"""One optimizer step on the real DeepSpeed engine: exact per-task losses under gradient accumulation."""

from __future__ import annotations

import torch

from mtft.adapters import ADAPTERS
from mtft.adapters.base import AdapterRuntime
from mtft.data.collate import collate
from mtft.data.tasks import load_tasks
from mtft.models import load_model_and_tokenizer
from mtft.training.engine import build_engine
from mtft.training.step import optimizer_step, step_batches
from tests.helpers import compose_config, small_data_overrides


def _engine(cfg):
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    torch.manual_seed(0)  # LoRA A is drawn from the global generator: the same draw for both engines
    model = ADAPTERS[cfg.adapter.name].inject(model, cfg.adapter)
    for name, p in model.named_parameters():  # a non-zero B, so every LoRA weight has a gradient at step 1
        if "lora_B" in name:
            torch.manual_seed(1)
            torch.nn.init.normal_(p, std=0.05)
    return build_engine(model, cfg, world_size=1), tokenizer


def _step_with_grads(engine, micro_batches, weights, num_tasks):
    """Run optimizer_step and capture each trainable parameter's gradient as accumulated over the step."""
    captured = {}
    params = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    hooks = [
        p.register_post_accumulate_grad_hook(lambda p, n=n: captured.update({n: p.grad.clone()})) for n, p in params
    ]
    batches = step_batches(micro_batches, num_tasks)
    result = optimizer_step(engine, batches, weights, AdapterRuntime(), lambda w, counts: w)
    for hook in hooks:
        hook.remove()
    return result, captured


def test_accumulation_is_exact(dist_group, small_tasks):
    base = [*small_data_overrides(small_tasks), "trainer.lr=1e-3", "trainer.lr_scheduler=constant"]
    one_by_eight = compose_config([*base, "trainer.micro_batch_size=8", "trainer.grad_accum_steps=1"])
    four_by_two = compose_config([*base, "trainer.micro_batch_size=2", "trainer.grad_accum_steps=4"])
    engine_a, tokenizer = _engine(one_by_eight)
    engine_b, _ = _engine(four_by_two)

    tasks = load_tasks(one_by_eight.data, tokenizer, seed=0)
    # Uneven on purpose: long add samples in the first micro-batches, short sentiment ones last, so a loss
    # averaged per micro-batch (MFTCoder's) would weight tokens differently from the whole-step mean.
    samples = tasks[0].train[:5] + tasks[1].train[:3]
    weights = torch.tensor([1.0, 3.0])

    result_a, grads_a = _step_with_grads(engine_a, [collate(samples, tokenizer.pad_token_id)], weights, 2)
    micro = [collate(samples[i : i + 2], tokenizer.pad_token_id) for i in range(0, 8, 2)]
    result_b, grads_b = _step_with_grads(engine_b, micro, weights, 2)

    assert result_a.counts == result_b.counts
    means_a, means_b = (torch.tensor(r.sums) / torch.tensor(r.counts) for r in (result_a, result_b))
    torch.testing.assert_close(means_a, means_b, atol=1e-5, rtol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for i in grads_a:
        torch.testing.assert_close(grads_a[i], grads_b[i], atol=1e-5, rtol=1e-4)
    params_a = [p for p in engine_a.module.parameters() if p.requires_grad]
    params_b = [p for p in engine_b.module.parameters() if p.requires_grad]
    for pa, pb in zip(params_a, params_b, strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=0)
    assert engine_a.global_steps == engine_b.global_steps == 1


def test_micro_batch_means_would_differ(dist_group, small_tasks):
    """Guard for the test above: on this split, per-micro-batch averaging gives another loss."""
    cfg = compose_config(small_data_overrides(small_tasks))
    _, tokenizer = load_model_and_tokenizer(cfg.model)
    tasks = load_tasks(cfg.data, tokenizer, seed=0)
    samples = tasks[0].train[:5] + tasks[1].train[:3]
    step_tokens = sum(sum(label != -100 for label in s.labels[1:]) for s in samples[:5])
    first_micro_tokens = sum(sum(label != -100 for label in s.labels[1:]) for s in samples[:2])
    assert first_micro_tokens * 4 != step_tokens  # the first micro-batch is not a quarter of the step's add tokens


def test_zero_weight_task_alone_leaves_the_model_unchanged(dist_group, small_tasks):
    """Through the real engine: a step holding only a zero-weight task makes no update (AdamW, no decay)."""
    cfg = compose_config([*small_data_overrides(small_tasks), "balancer=static", "balancer.weights={add: 0.0}"])
    engine, tokenizer = _engine(cfg)
    tasks = load_tasks(cfg.data, tokenizer, seed=0)
    before = [p.detach().clone() for p in engine.module.parameters() if p.requires_grad]
    weights = torch.tensor([cfg.balancer.weights.get(n, 1.0) for n in ("add", "sentiment")])
    result, grads = _step_with_grads(engine, [collate(tasks[0].train[:4], tokenizer.pad_token_id)], weights, 2)
    assert result.counts[0] > 0 and result.sums[0] > 0  # the task was there and its loss was measured
    assert all(g.abs().max().item() == 0.0 for g in grads.values())
    after = [p for p in engine.module.parameters() if p.requires_grad]
    assert all(torch.equal(a, b) for a, b in zip(after, before, strict=True))
