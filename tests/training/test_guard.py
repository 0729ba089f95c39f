"""The numerical guard: a step with a non-finite loss or gradient is skipped (no update, no LR step, no balancer
change), counted and shown; too many in a row stop the run loudly; non-finite weights are never saved."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing

import mtft.training.step as step_module
from mtft.training import components
from mtft.training.checkpoint.files import COMPLETE_MARKER
from mtft.training.guard import (
    NumericalGuard,
    TrainingDiverged,
    poison_if_nonfinite,
    skip_cause,
)
from mtft.training.loop import train
from mtft.training.optimizer import GuardedAdamW, MasterAdamW
from tests.helpers import compose_config, computed, small_data_overrides

# ---- the pieces ----------------------------------------------------------------------------------------------


def test_poison_leaves_a_finite_loss_exactly_alone_and_spoils_a_non_finite_one():
    w = torch.tensor([1.5, -2.0], requires_grad=True)
    finite = (w * 3).sum()
    poisoned = poison_if_nonfinite(finite)
    assert float(poisoned.detach()) == float(finite.detach())
    (grad,) = torch.autograd.grad(poisoned, w)
    assert grad.tolist() == [3.0, 3.0]

    # an infinite cross-entropy has a finite gradient: without the poison, the update would go through
    logits = torch.tensor([[0.0, -math.inf]], requires_grad=True)
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([1]))
    assert math.isinf(float(ce)) and torch.isfinite(torch.autograd.grad(ce, logits, retain_graph=True)[0][0, 0])
    (grad,) = torch.autograd.grad(poison_if_nonfinite(ce), logits)
    assert torch.isnan(grad).all()


def test_master_adamw_skips_a_nan_step_on_the_device_and_clips_a_finite_one():
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]
    optimizer = MasterAdamW(params, max_grad_norm=1.0, lr=0.1, weight_decay=0.0)
    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, math.nan])
    optimizer.step()
    assert optimizer.skipped.item() == 1.0 and math.isnan(optimizer.grad_norm.item())
    assert all(p.tolist() == [1.0] * len(p) for p in params)  # no update
    assert optimizer.state[optimizer.master]["step"].item() == 0  # the kernel took its step count back

    params[0].grad, params[1].grad = torch.tensor([3.0, 0.0, 4.0]), torch.zeros(2)
    optimizer.step()
    assert optimizer.skipped.item() == 0.0 and optimizer.grad_norm.item() == pytest.approx(5.0)  # before clipping
    # clipped to norm 1 (×1/5), then Adam's first step moves each weight by lr·sign(g)
    assert params[0].tolist() == pytest.approx([0.9, 1.0, 0.9]) and params[1].tolist() == [1.0, 1.0]
    assert optimizer.state[optimizer.master]["step"].item() == 1


def _guard_on_two_ranks(rank: int, port: int, out) -> None:
    """Each rank holds one partition of the weights (as under ZeRO-2); rank 1 alone sees a NaN loss in step 2."""
    dist.init_process_group("gloo", rank=rank, world_size=2, init_method=f"tcp://127.0.0.1:{port}")
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = GuardedAdamW([param], max_grad_norm=1.0, lr=0.1, weight_decay=0.0, sum_norm_over_ranks=True)
    steps = []
    for grad, loss in [([3.0, 0.0] if rank == 0 else [0.0, 4.0], 1.0), ([1.0, 1.0], math.nan if rank else 1.0)]:
        param.grad = torch.tensor(grad)
        optimizer.watch_loss(torch.tensor(loss))
        optimizer.step()
        steps.append([optimizer.grad_norm.item(), optimizer.skipped.item(), *param.tolist()])
    (out / f"{rank}.json").write_text(json.dumps(steps))
    dist.destroy_process_group()


def test_guarded_adamw_sums_the_norm_over_ranks_and_skips_on_every_rank(tmp_path):
    from mtft.training.engine import _free_port

    torch.multiprocessing.spawn(_guard_on_two_ranks, args=(_free_port(), tmp_path), nprocs=2)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    for first, second in ranks:
        assert first[:2] == pytest.approx([5.0, 0.0])  # √(3² + 4²): both partitions, before clipping
        assert math.isnan(second[0]) and second[1] == 1.0  # one rank's NaN loss skips every rank's update
    assert ranks[0][0][2:] == pytest.approx([0.9, 1.0]) and ranks[1][0][2:] == pytest.approx([1.0, 0.9])
    assert ranks[0][1][2:] == ranks[0][0][2:] and ranks[1][1][2:] == ranks[1][0][2:]


def test_master_adamw_skips_a_non_finite_loss_with_finite_gradients():
    param = torch.nn.Parameter(torch.ones(2))
    optimizer = MasterAdamW([param], max_grad_norm=0.0, lr=0.1, weight_decay=0.0)
    optimizer.watch_loss(torch.tensor(math.inf))
    param.grad = torch.ones(2)
    optimizer.step()
    assert optimizer.skipped.item() == 1.0 and param.tolist() == [1.0, 1.0]
    optimizer.watch_loss(torch.tensor(2.0))  # the probe is per step: the next step is judged on its own
    param.grad = torch.ones(2)
    optimizer.step()
    assert optimizer.skipped.item() == 0.0 and param.tolist() == pytest.approx([0.9, 0.9])


def test_master_adamw_keeps_fp32_masters_of_bf16_weights_across_a_state_dict():
    param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = MasterAdamW([param], max_grad_norm=0.0, lr=1e-4, weight_decay=0.0)
    for _ in range(3):  # steps below bf16's resolution at 1.0: only the master moves
        param.grad = torch.ones(4, dtype=torch.bfloat16)
        optimizer.step()
    assert param.tolist() == [1.0] * 4 and optimizer.master.tolist() == pytest.approx([1 - 3e-4] * 4, abs=1e-6)
    state = optimizer.state_dict()
    fresh_param = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    fresh = MasterAdamW([fresh_param], max_grad_norm=0.0, lr=1e-4, weight_decay=0.0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.master, optimizer.master)
    assert torch.equal(fresh.state[fresh.master]["exp_avg_sq"], optimizer.state[optimizer.master]["exp_avg_sq"])
    with pytest.raises(ValueError, match="before the lean step"):
        fresh.load_state_dict({k: v for k, v in state.items() if k != "master_weights"})


def test_guard_counts_in_a_row_and_in_all():
    guard = NumericalGuard(max_bad_steps=2)
    assert not guard.step_skipped(3)
    guard.step_applied()
    assert not guard.step_skipped(5)
    assert guard.step_skipped(6)  # the second in a row
    assert guard.state_dict() == {"skipped": 3, "in_a_row": 2, "first_bad_step": 5}
    restored = NumericalGuard(2)
    restored.load_state_dict(guard.state_dict())
    message = restored.stop_message(6, "the loss of task add (nan)", None)
    assert "step 6" in message and "since step 5" in message and "add (nan)" in message
    assert "no checkpoint was written" in message


def test_skip_cause_names_the_task_or_the_norm():
    assert skip_cause(["add (nan)"], 1.0) == "non-finite loss of task add (nan)"
    assert skip_cause([], math.inf) == "non-finite gradient norm (inf)"


# ---- in a run ------------------------------------------------------------------------------------------------

BAD_STEPS = {4, 5}


def inject_nan_into_add(monkeypatch, bad_steps=BAD_STEPS, every_task: bool = False) -> None:
    """Task 'add' (index 0), or `every_task`, gets a NaN loss, and NaN gradients, on the optimizer steps
    `bad_steps`. The step number is the engine's own counter, which a resumed run restores, so the injection lands
    on the same steps."""
    now = {"step": 0}
    original_step, original_sums = step_module.optimizer_step, step_module.task_loss_sums

    def counting_step(engine, *args, **kwargs):
        now["step"] = engine.global_steps + 1
        return original_step(engine, *args, **kwargs)

    def poisoned_sums(losses, index, num_tasks):
        sums = original_sums(losses, index, num_tasks)
        if now["step"] in bad_steps:
            poisoned = [math.nan] + [math.nan if every_task else 1.0] * (num_tasks - 1)
            sums = sums * torch.tensor(poisoned, device=sums.device)
        return sums

    monkeypatch.setattr(step_module, "optimizer_step", counting_step)
    monkeypatch.setattr(step_module, "task_loss_sums", poisoned_sums)


def _config(out, small_tasks, *extra):
    return compose_config(
        [
            *small_data_overrides(small_tasks),
            f"trainer.output_dir={out}",
            "trainer.micro_batch_size=4",
            "trainer.logging_steps=1",
            "trainer.eval_steps=100",
            "trainer.warmup_steps=0",
            "trainer.max_steps=8",
            "balancer=coba",  # its weights move with every observed step
            "balancer.warmup_steps=2",
            "balancer.update_interval=1",
            *extra,
        ]
    )


def _records(out) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def _weights(record: dict) -> dict[str, float]:
    return {k: v for k, v in record.items() if k.endswith("/weight")}


def test_nan_steps_are_skipped_counted_and_training_goes_on(dist_group, small_tasks, tmp_path, monkeypatch, capsys):
    train(_config(tmp_path / "clean", small_tasks))
    expected = _records(tmp_path / "clean")
    inject_nan_into_add(monkeypatch)
    summary = train(_config(tmp_path / "nan", small_tasks))

    got = _records(tmp_path / "nan")
    assert summary["steps"] == 8 and summary["skipped_steps"] == 2
    assert [got[s]["train/skipped_steps"] for s in range(1, 9)] == [0, 0, 0, 1, 2, 2, 2, 2]
    for s in BAD_STEPS:  # nothing was trained in those windows: no per-task loss, and no number posing as one
        assert math.isnan(got[s]["loss"]) and not [k for k in got[s] if k.startswith("task/") and k.endswith("/loss")]
    # the LR schedule did not step on the skipped steps: step 6 runs at the clean run's step-4 rate
    assert got[6]["lr"] == expected[4]["lr"] != expected[6]["lr"]
    # the balancer observed nothing: the weights in effect stay those of step 4 until an applied step is seen
    assert _weights(got[4]) == _weights(got[5]) == _weights(got[6]) != _weights(expected[6])
    assert all(math.isfinite(got[s]["loss"]) for s in (6, 7, 8))  # and training went on
    out = capsys.readouterr().out
    assert "step 4/8  SKIPPED (1 in a row, 1 in all): non-finite loss of task add (nan)" in out
    assert "step 5/8  SKIPPED (2 in a row, 2 in all)" in out


def test_resume_across_skipped_steps_is_exact(dist_group, small_tasks, tmp_path, monkeypatch):
    """Checkpoint 4 is written between the two skipped steps (one in a row so far): the resumed run must count on
    from there and end exactly as the unbroken one."""
    inject_nan_into_add(monkeypatch)
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    train(_config(straight, small_tasks, "trainer.save_steps=4", "adapter=smora"))
    train(_config(broken, small_tasks, "trainer.save_steps=4", "adapter=smora"))
    shutil.rmtree(broken / "checkpoint-8")  # as if it had crashed after checkpoint-4
    summary = train(_config(broken, small_tasks, "trainer.save_steps=4", "adapter=smora", "trainer.resume=auto"))

    expected, resumed = _records(straight), _records(broken)
    assert summary["skipped_steps"] == 2 and resumed[5]["train/skipped_steps"] == 2
    for s in range(5, 9):
        assert json.dumps(computed(resumed[s])) == json.dumps(computed(expected[s])), s  # NaN == NaN as text
    final = "checkpoint-8/adapter/adapter_model.safetensors"
    assert (straight / final).read_bytes() == (broken / final).read_bytes()


def test_too_many_bad_steps_in_a_row_stop_the_run(dist_group, small_tasks, tmp_path, monkeypatch):
    inject_nan_into_add(monkeypatch)
    out = tmp_path / "stopped"
    with pytest.raises(TrainingDiverged) as stopped:
        train(_config(out, small_tasks, "trainer.max_bad_steps=2", "trainer.save_steps=2"))
    message = str(stopped.value)
    assert "stopped at step 5" in message and "since step 4" in message and "trainer.max_bad_steps=2" in message
    assert "the loss of task add (nan)" in message
    assert f"the last good checkpoint is {out / 'checkpoint-4'}" in message
    assert not (out / "checkpoint-6").exists() and not (out / "summary.json").exists()
    assert _records(out)[5]["train/skipped_steps"] == 2  # the stopping step is on record too


def test_a_non_finite_gradient_is_named_by_parameter(dist_group, small_tasks, tmp_path, monkeypatch):
    """The loss is finite, one adapter weight's gradient is not (as MoLoRA's once were): the stop names it."""
    original_inject = components.ADAPTERS["lora"].inject

    def inject_with_a_bad_gradient(model, cfg):
        model = original_inject(model, cfg)
        name, param = next(
            (n, p) for n, p in model.named_parameters() if n.endswith("layers.1.mlp.up_proj.lora_A.default.weight")
        )
        param.register_hook(lambda grad: grad * math.nan)
        return model

    monkeypatch.setattr(
        components,
        "ADAPTERS",
        {**components.ADAPTERS, "lora": components.ADAPTERS["lora"]._replace(inject=inject_with_a_bad_gradient)},
    )
    with pytest.raises(TrainingDiverged) as stopped:
        train(_config(tmp_path / "grad", small_tasks, "trainer.max_bad_steps=3"))
    message = str(stopped.value)
    assert "stopped at step 3" in message and "since step 1" in message
    assert "non-finite gradients of" in message and "layers.1.mlp.up_proj.lora_A" in message


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_zero_stages_skip_and_count_the_same(dist_group, small_tasks, tmp_path, monkeypatch, stage):
    """Under ZeRO-2 the skip is GuardedAdamW's, on the device inside DeepSpeed's ZeRO optimizer; under ZeRO-3 it is
    DeepSpeed's own overflow check. Counted the same, and the LR schedule holds still through both skips."""
    inject_nan_into_add(monkeypatch)
    summary = train(_config(tmp_path / stage, small_tasks, f"deepspeed={stage}", "trainer.max_steps=6"))
    got = _records(tmp_path / stage)
    assert summary["skipped_steps"] == 2 and got[6]["train/skipped_steps"] == 2
    assert math.isfinite(got[6]["loss"]) and not math.isfinite(got[4]["grad_norm"])
    assert got[3]["lr"] == got[4]["lr"] == got[5]["lr"] != got[6]["lr"]  # the rate after each step


def test_non_finite_weights_are_never_saved(dist_group, small_tasks, tmp_path, monkeypatch):
    """An update that leaves a weight infinite (as an absurd learning rate can): the checkpoint is refused."""
    original_step = step_module.optimizer_step

    def overflowing_step(engine, *args, **kwargs):
        result = original_step(engine, *args, **kwargs)
        with torch.no_grad():
            next(p for p in engine.module.parameters() if p.requires_grad).fill_(math.inf)
        return result

    monkeypatch.setattr(step_module, "optimizer_step", overflowing_step)
    out = tmp_path / "inf"
    with pytest.raises(TrainingDiverged) as stopped:
        train(_config(out, small_tasks, "trainer.save_steps=1"))
    assert "non-finite values (base_model.model.model.layers.0" in str(stopped.value)
    assert "checkpoint-1 was not written; no checkpoint was written" in str(stopped.value)
    assert not list(out.glob(f"checkpoint-*/{COMPLETE_MARKER}"))
