"""Checkpoints, one job a module:

- `files.py`: a checkpoint on disk: what `checkpoint-<step>/` holds, its COMPLETE marker and manifest, writing,
  verifying, finding, pruning and loading it, and the checks that a resume's data is the data it was saved with;
- `resumable.py`: what the loop carries (TrainState) and every object a resume restores (Resumable);
- `checkpointer.py`: the Checkpointer, the one object the loop asks whether a save is due, to save, to resume.

Import from the module that holds a name (`from mtft.training.checkpoint.files import COMPLETE_MARKER`).
"""
