"""The run's checkpoints, owned by one object: where they go, which one a run resumes from (and whether it may),
saving, pruning and the newest. The files themselves are training/checkpoint/files.py's; the loop asks this object
only whether a step is due and to save or resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from mtft.adapters import AdapterConfig
from mtft.config.sections import TrainerConfig
from mtft.data.config import DataConfig
from mtft.distributed import kept_across_restarts, same_on_all_ranks
from mtft.errors import ConfigError
from mtft.training.checkpoint.files import (
    CheckpointContents,
    complete_checkpoints,
    find_resume_checkpoint,
    input_changes,
    load_checkpoint,
    prepare_output_dir,
    prune_checkpoints,
    refuse_changes,
    sample_changes,
    save_checkpoint,
)
from mtft.training.checkpoint.resumable import Resumable
from mtft.training.engine import Engine


class Checkpointer:
    """Checked when built, before any model loads, so a mistake costs seconds: the directory is writable; it
    holds no other run (unless `trainer.resume=auto`); the checkpoint to resume from, if any, was made with this
    data and seed (or `trainer.resume_allow_changes`)."""

    def __init__(self, trainer: TrainerConfig, data: DataConfig):
        # the default output_dir holds a timestamp each rank resolved: rank 0's, everywhere, and after a torchrun
        # restart the first attempt's, so that trainer.resume=auto finds its checkpoints
        output_dir = self.output_dir = Path(same_on_all_ranks(kept_across_restarts("output_dir", trainer.output_dir)))
        self.trainer = trainer
        self.resume_from = find_resume_checkpoint(output_dir, trainer.resume) if trainer.resume else None
        # what the data stream follows: a resume with other values cannot continue it
        self.run_inputs = {"data": dataclasses.asdict(data), "trainer": {"seed": trainer.seed}}
        self.changes = input_changes(self.resume_from, self.run_inputs) if self.resume_from is not None else []
        refuse_changes(self.resume_from, self.changes, trainer.resume_allow_changes)
        if self.resume_from is None and (output_dir / "metrics.jsonl").exists() and trainer.resume != "auto":
            raise ConfigError(
                "trainer.output_dir",
                f"{output_dir} already holds a run; set trainer.resume=auto or pick a new directory",
            )
        prepare_output_dir(output_dir)  # unwritable: an error now, not at the first checkpoint

    def due(self, step: int) -> bool:
        """A scheduled checkpoint: every `trainer.save_steps`, and at the last step."""
        t = self.trainer
        return bool(t.save_steps and step % t.save_steps == 0) or step == t.max_steps

    def resume(self, engine: Engine, resumable: Resumable, names: list[str], sizes: list[int]) -> None:
        """Restore the engine and every stateful object from `resume_from`. The data stream continues only if the
        data is the same: the config's changes and what the sampler's state shows (task files edited in place)."""
        t = self.trainer
        run_state, rank_state = load_checkpoint(engine, self.resume_from)
        more = sample_changes(rank_state["batches"]["sampler"], names, sizes, t.seed)
        more = [change for change in more if change not in self.changes]
        refuse_changes(self.resume_from, more, t.resume_allow_changes)
        resumable.load(run_state, rank_state, same_data=not self.changes and not more)

    def save(
        self,
        engine: Engine,
        step: int,
        resumable: Resumable,
        adapter: AdapterConfig,
        tokenizer: PreTrainedTokenizerBase,
        best_step: int | None,
    ) -> None:
        """checkpoint-`step`, then the oldest beyond `trainer.save_total_limit` go; never the one resumed from nor
        the best (`best_step`, kept by `trainer.keep_best`)."""
        contents = CheckpointContents(
            resumable.run_state(), resumable.rank_state(), adapter, tokenizer, self.run_inputs
        )
        save_checkpoint(engine, self.output_dir, step, contents)
        best = self.output_dir / f"checkpoint-{best_step}" if best_step is not None else None
        prune_checkpoints(self.output_dir, self.trainer.save_total_limit, protect=[self.resume_from, best])

    def newest(self) -> Path | None:
        """The newest complete checkpoint, or the one resumed from."""
        found = complete_checkpoints(self.output_dir)
        return found[-1] if found else self.resume_from
