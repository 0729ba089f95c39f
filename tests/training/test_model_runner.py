"""A runner's mode switches through the runner, so that a wrapper around the model (DeepSpeed's engine, ZeRO-3's
inference engine) sees eval mode, and comes back after, also when validation raises."""

from __future__ import annotations

import pytest
from torch import nn

from mtft.models import eval_mode
from mtft.training.model_runner import PlainRunner


class Wrapper(nn.Module):
    """Stands for an engine around the model: it records the modes it was switched to."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.modes = model, []

    def train(self, mode: bool = True):
        self.modes.append(mode)
        return super().train(mode)


def test_eval_mode_switches_the_wrapper_and_restores_training_after_a_failure():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    outer = Wrapper(model)
    runner = PlainRunner(outer, model, model[0].weight.device)
    assert runner.training
    with pytest.raises(RuntimeError), eval_mode(runner):
        assert not runner.training and not model[1].training
        raise RuntimeError("validation failed")
    assert outer.modes == [False, True]
    assert runner.training and model[1].training


def test_eval_mode_leaves_a_runner_in_eval_mode_as_it_found_it():
    model = nn.Linear(2, 2).eval()
    runner = PlainRunner.alone(model)
    with eval_mode(runner):
        assert not runner.training
    assert not runner.training
