"""The lm-eval-harness bridge (the optional extra `eval`): lm-eval tasks, the harness's own or local task YAMLs
over local data files, run against a loaded mtft model through lm-eval's Python API.

Why a bridge rather than our own metrics: standard benchmarks should be scored exactly as everyone else scores
them. The harness gets the model object itself (an adapted transformers model: PEFT's LoRA layers or mtft's
expert layers in place), so nothing is merged or exported first. An adapter whose runtime routes on the prompt
apart from the answer (its `routes_on_the_prompt`) is refused: the harness scores prompt and answer as one sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from mtft.adapters import runtime_of
from mtft.errors import ConfigError


@dataclass(frozen=True)
class Harness:
    """What to run: lm-eval `tasks`, with `include_path` a folder of the user's own task YAMLs."""

    tasks: list[str]
    include_path: Path | None = None
    limit: int | None = None  # documents per task; None: all
    num_fewshot: int | None = None
    batch_size: int = 8


def harness_results(model: nn.Module, tokenizer: PreTrainedTokenizerBase, harness: Harness) -> dict[str, dict]:
    """{task: {metric: value}} from `lm_eval.simple_evaluate`."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("harness_tasks", "needs lm-eval: pip install 'mtft[eval]'") from None
    if runtime_of(model).routes_on_the_prompt:
        raise ConfigError(
            "harness_tasks",
            "this adapter routes on the prompt apart from the answer; lm-eval scores them as one sequence",
        )
    tasks, include_path = harness.tasks, harness.include_path
    if include_path is not None and not include_path.is_dir():
        raise ConfigError("harness_include", f"{include_path} is not a directory of task YAMLs")
    manager = TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError("harness_tasks", f"lm-eval knows no task {unknown} (include_path={include_path})")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=harness.batch_size)
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        limit=harness.limit,
        num_fewshot=harness.num_fewshot,
        log_samples=False,
    )
    return {task: _numbers(values) for task, values in output["results"].items()}


def _numbers(values: dict[str, Any]) -> dict[str, Any]:
    """The harness's metrics (`acc,none`, `acc_stderr,none`, ...), without its bookkeeping such as `alias`."""
    return {key: value for key, value in values.items() if isinstance(value, int | float)}
