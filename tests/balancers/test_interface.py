"""The trainer talks to a balancer through its interface alone: it owns its schedule, and the loop reads no
other attribute of it (issue 12)."""

from __future__ import annotations

from pathlib import Path

import mtft.training
from mtft.balancers.base import Balancer
from tests.helpers import handle_attributes

INTERFACE = {
    "start",
    "val_request",
    "val_batch_size",
    "observe",
    "after_step",
    "sampled",
    "weights",
    "reduction",
    "metrics",
    "state_dict",
    "load_state_dict",
}


def test_the_interface_is_what_the_base_class_defines():
    defined = {name for name, value in vars(Balancer).items() if callable(value) and not name.startswith("_")}
    assert defined == INTERFACE


def test_the_trainer_reads_only_the_interface():
    used = {
        (path.name, attr)
        for path in Path(mtft.training.__file__).parent.glob("*.py")
        for attr in handle_attributes(path.read_text(), "balancer")
    }
    assert {attr for _, attr in used} <= INTERFACE, sorted(used)
    assert {"start", "val_request", "observe", "after_step", "sampled", "reduction"} <= {attr for _, attr in used}
