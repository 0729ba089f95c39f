"""The lm-eval-harness bridge (the optional extra `eval`): lm-eval tasks, the harness's own or local task YAMLs
over local data files, run against a loaded mtft model through lm-eval's Python API.

Why a bridge rather than our own metrics: standard benchmarks should be scored exactly as everyone else scores
them. The harness gets the model object itself (an adapted transformers model: PEFT's LoRA layers or mtft's
expert layers in place), so nothing is merged or exported first. MoR1E with an intuition prior is refused: its
routing needs each prompt's prior, which the harness's requests do not carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from mtft.adapters.intuition import MODULE_NAME
from mtft.errors import ConfigError


def harness_results(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    tasks: list[str],
    include_path: Path | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
) -> dict[str, dict[str, Any]]:
    """{task: {metric: value}} from `lm_eval.simple_evaluate`; `include_path`: a folder of the user's task YAMLs."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("harness_tasks", "needs lm-eval: pip install 'mtft[eval]'") from None
    if hasattr(model, MODULE_NAME):
        raise ConfigError(
            "harness_tasks",
            "MoR1E with an intuition prior routes on each prompt's prior, which lm-eval's requests do not carry",
        )
    if include_path is not None and not include_path.is_dir():
        raise ConfigError("harness_include", f"{include_path} is not a directory of task YAMLs")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError("harness_tasks", f"lm-eval knows no task {unknown} (include_path={include_path})")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    output = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit, num_fewshot=num_fewshot, log_samples=False
    )
    return {task: _numbers(values) for task, values in output["results"].items()}


def _numbers(values: dict[str, Any]) -> dict[str, Any]:
    """The harness's metrics (`acc,none`, `acc_stderr,none`, ...), without its bookkeeping such as `alias`."""
    return {key: value for key, value in values.items() if isinstance(value, int | float)}
