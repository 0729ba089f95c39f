"""Evaluation beyond the loss: sample generations per task."""
