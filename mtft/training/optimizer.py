"""AdamW with clipping and the numerical guard decided on the device, in bf16 or fp32: `MasterAdamW` for the lean
step (ZeRO-0: one flat fp32 master copy of the trainable weights), `GuardedAdamW` inside DeepSpeed's ZeRO-1/2.

Why: DeepSpeed's ZeRO-0 wrappers work tensor by tensor (a cast, a copy, an unscale, a norm and an overflow test
for each of a LoRA model's hundreds of tensors) and read an overflow flag on the host, and torch's single-tensor
AdamW reads each step counter. Here a step is a fixed handful of ops, whatever the number of tensors:

1. the gradients are copied (cast) into one flat fp32 buffer: one `_foreach_copy_`;
2. with several ranks, one all-reduce sums that buffer (the engine's per-bucket all-reduce is off);
3. one global norm; `found_inf` is 1 when it, or a loss of the step (`watch_loss`), is not finite;
4. torch's fused AdamW steps the flat master. It divides the gradients by `grad_scale` = max(1, (norm + 1e-6) /
   max_norm): clipping by the global norm, as DeepSpeed and torch clip, with no pass of its own. With `found_inf`
   set its kernel leaves weights and moments as they were and takes the step count back, on the device;
5. the master is copied (cast) back into the model's weights: one `_foreach_copy_`.

Under ZeRO-1/2 DeepSpeed does steps 1, 2 and 5 over its own flat partitions, and GuardedAdamW steps 3 and 4 (the
norm's squares summed over ranks). Nothing here reads a value on the host: the training step reads `grad_norm` and
`skipped` with its other numbers, once (training/step.py), and steps the LR schedule only for an applied step
(training/engine.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn


class GuardedAdamW(torch.optim.AdamW):
    """Fused torch AdamW that clips by the global gradient norm and skips a non-finite step, on the device.

    Used as it is inside DeepSpeed's ZeRO-1/2 optimizer (with DeepSpeed's own norm and overflow check turned off,
    both of which read the host), where its parameters are this rank's flat fp32 partitions: their squared norms
    are summed over the ranks (`sum_norm_over_ranks`) in one all-reduce of a scalar."""

    def __init__(self, params, max_grad_norm: float, lr: float, weight_decay: float, sum_norm_over_ranks=False):
        super().__init__(params, lr=lr, weight_decay=weight_decay, fused=True)
        device = self.param_groups[0]["params"][0].device
        self.max_grad_norm = max_grad_norm
        self.grad_norm = torch.zeros((), device=device)  # of the last step, before clipping
        self.skipped = torch.zeros((), device=device)  # 1.0 when the last step's update was skipped
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1
        self.sum_norm_over_ranks = sum_norm_over_ranks and self.world_size > 1
        self.loss_probe: torch.Tensor | None = None  # 0.0 while every watched loss is finite, else NaN

    def watch_loss(self, loss: torch.Tensor) -> None:
        """The guard's loss test, folded into the step's own: a non-finite loss (which can have finite gradients)
        makes the norm NaN, so the step is skipped with no op of its own in the backward."""
        probe = loss.detach() * 0.0
        self.loss_probe = probe if self.loss_probe is None else self.loss_probe + probe

    def _take_probe(self) -> torch.Tensor | None:
        probe, self.loss_probe = self.loss_probe, None
        return probe

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError(f"{type(self).__name__} takes no closure")
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        device = self.grad_norm.device
        local = (
            torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            if grads
            else torch.zeros((), device=device)
        )
        squares, probe = local.square(), self._take_probe()
        if probe is not None:
            squares = squares + probe
        if self.sum_norm_over_ranks:  # a NaN probe on any rank reaches every rank's norm through the sum
            dist.all_reduce(squares)
        self._decide(squares.sqrt())
        super().step()

    def _decide(self, norm: torch.Tensor) -> None:
        """Clip and guard the coming fused step by `norm`, the global norm (NaN for a non-finite step)."""
        self.grad_norm, self.skipped = norm, torch.where(torch.isfinite(norm), 0.0, 1.0)
        if self.max_grad_norm > 0:  # the kernel divides the gradients by it: clipped by min(1, max_norm / (norm + ε))
            self.grad_scale = torch.add(1e-6 / self.max_grad_norm, norm, alpha=1 / self.max_grad_norm).clamp_(min=1.0)
        self.found_inf = self.skipped  # read by the kernel too: no update, and the step count taken back


class MasterAdamW(GuardedAdamW):
    """The lean step's optimizer: GuardedAdamW over one flat fp32 master of `params` (any dtype), which it copies
    back after each step. With several ranks it sums the flat gradient in one all-reduce (the engine's are off)."""

    def __init__(self, params: list[nn.Parameter], max_grad_norm: float, lr: float, weight_decay: float):
        self.model_params = list(params)
        numel = sum(p.numel() for p in self.model_params)
        device = self.model_params[0].device
        master = nn.Parameter(torch.empty(numel, dtype=torch.float32, device=device))
        master.grad = torch.zeros_like(master)
        self.master_views = _views(master.data, self.model_params)
        self.grad_views = _views(master.grad, self.model_params)
        with torch.no_grad():
            torch._foreach_copy_(self.master_views, [p.detach() for p in self.model_params])
        super().__init__([master], max_grad_norm, lr=lr, weight_decay=weight_decay)
        self.master = master

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("MasterAdamW takes no closure")
        have = [
            (view, p.grad) for view, p in zip(self.grad_views, self.model_params, strict=True) if p.grad is not None
        ]
        if len(have) < len(self.model_params):  # a weight outside this step's graph: no gradient, not a NaN
            self.master.grad.zero_()
        if have:
            torch._foreach_copy_([view for view, _ in have], [grad for _, grad in have])
        grad, probe = self.master.grad, self._take_probe()
        if self.world_size > 1:  # a NaN probe on any rank reaches every rank's norm through the sum
            if probe is not None:
                grad[:1].add_(probe)
            dist.all_reduce(grad)
            norm = torch.linalg.vector_norm(grad)
        else:
            norm = torch.linalg.vector_norm(grad) if probe is None else torch.linalg.vector_norm(grad) + probe
        self._decide(norm)
        torch.optim.AdamW.step(self)
        torch._foreach_copy_([p.data for p in self.model_params], self.master_views)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The model's gradients; the master's buffer is overwritten by the next step."""
        for param in self.model_params:
            param.grad = None

    def state_dict(self) -> dict[str, Any]:
        """AdamW's state plus the fp32 master: a resumed bf16 run continues from the exact weights, not their
        bf16 rounding."""
        return {**super().state_dict(), "master_weights": self.master.detach().clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        if "master_weights" not in state_dict:
            raise ValueError(
                "this checkpoint's optimizer state was written by DeepSpeed's ZeRO-0 optimizer (mtft before the lean "
                "step), which the lean step cannot continue; resume it with the mtft version that wrote it"
            )
        master = state_dict.pop("master_weights")
        if master.shape != self.master.shape:
            raise ValueError(
                f"the checkpoint's master weights have {master.numel()} values, this model {self.master.numel()}"
            )
        super().load_state_dict(state_dict)
        with torch.no_grad():
            self.master.copy_(master)
            torch._foreach_copy_([p.data for p in self.model_params], self.master_views)


def _views(flat: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """`flat` cut into views shaped like `params`, in order."""
    views, start = [], 0
    for param in params:
        views.append(flat[start : start + param.numel()].view(param.shape))
        start += param.numel()
    return views
