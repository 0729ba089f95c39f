"""What a run builds before its first step, apart from the engine: the tokenizer, the base model with its adapter
injected and its runtime attached, the tokenized tasks, and the data streams that mix them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from mtft.adapters import ADAPTERS, AdapterRuntime, attach_runtime
from mtft.adapters.base import count_parameters
from mtft.config.train import TrainConfig
from mtft.data.batches import MixedBatches, ValidationCycle
from mtft.data.sampler import mixing_probabilities
from mtft.data.tasks import TaskData, load_tasks
from mtft.data.tokenize import check_max_seq_len
from mtft.distributed import rank_zero_first
from mtft.models import compile_blocks, enable_gradient_checkpointing, load_model, load_tokenizer
from mtft.training.cross_entropy import CROSS_ENTROPY
from mtft.training.engine import deepspeed_config, sharded_loading


@dataclass
class ModelAndTasks:
    tokenizer: PreTrainedTokenizerBase
    model: torch.nn.Module  # the base with its adapter injected, trainable flags set
    adapter: AdapterRuntime  # the loop's one handle on the adapter (also attached to the model)
    tasks: list[TaskData]
    token_losses: Callable  # the per-token cross-entropy (trainer.cross_entropy)
    trainable: int  # parameters that train, and all of them (a ZeRO-3 shard counts as its whole parameter)
    total: int


def load_model_and_tasks(cfg: TrainConfig, world_size: int) -> ModelAndTasks:
    """The tokenizer first (a too-long `max_seq_len` is a config error before any weights load), the model (no
    rank holds it whole under ZeRO-3), the tasks (one rank tokenizes into the cache, the others read it), then the
    adapter and the speed and memory options: gradient checkpointing, compiled blocks."""
    tokenizer = load_tokenizer(cfg.model)
    check_max_seq_len(cfg.data, tokenizer)
    with sharded_loading(deepspeed_config(cfg, world_size)):
        model = load_model(cfg.model, tokenizer)
    with rank_zero_first():
        tasks = load_tasks(cfg.data, tokenizer, cfg.trainer.seed)
    method = ADAPTERS[cfg.adapter.name]
    model = method.inject(model, cfg.adapter)
    adapter = method.runtime(model, cfg.adapter)
    attach_runtime(model, adapter)  # generation finds it with the model
    if cfg.trainer.gradient_checkpointing:
        enable_gradient_checkpointing(model, adapter.recomputation)
    if cfg.trainer.compile:
        compile_blocks(model)
    losses = CROSS_ENTROPY[cfg.trainer.cross_entropy]
    return ModelAndTasks(tokenizer, model, adapter, tasks, losses, *count_parameters(model))


@dataclass
class DataStreams:
    probabilities: np.ndarray  # each task's share of the training samples (data.mixing)
    batches: MixedBatches  # this rank's training micro-batches
    val_cycle: ValidationCycle  # mixed validation micro-batches a balancer asks for between evaluations


def data_streams(
    tasks: list[TaskData], cfg: TrainConfig, pad_token_id: int, val_batch_size: int, rank: int, world_size: int
) -> DataStreams:
    """The mixture (`data.mixing`), this rank's training micro-batches (packed to `data.max_seq_len` with
    `data.packing`), and the validation cycle, in batches of the size the balancer asks for."""
    t = cfg.trainer
    probabilities = mixing_probabilities([len(task.train) for task in tasks], cfg.data)
    pack_to = cfg.data.max_seq_len if cfg.data.packing else None
    batches = MixedBatches(tasks, probabilities, t.micro_batch_size, pad_token_id, t.seed, rank, world_size, pack_to)
    val_cycle = ValidationCycle(tasks, val_batch_size, pad_token_id, t.seed, rank, world_size)
    return DataStreams(probabilities, batches, val_cycle)
