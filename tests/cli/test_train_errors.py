"""Bad configs through a real `mtft-train` process: exit code 2, one line naming the key and the allowed values or
the nearest key, no traceback, nothing trained. One case per layer that can reject a config, since each reports
through its own path: Hydra's composition (a group option; a key; a -m sweep's jobs), mtft's conversion, and the
checks in train()'s setup that need the tokenizer. Every other row is tested in process: tests/config/test_errors.py.
"""

from __future__ import annotations

import shlex

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.integration

CASES = {
    "hydra-group": (
        "adapter=nosuch",
        "adapter: no option 'nosuch'; the options are full, lora, molora, mor1e, none, smora",
    ),
    "hydra-key": ("trainer.lrr=1e-3", "trainer.lrr: unknown key; did you mean trainer.lr?"),
    "hydra-sweep": (
        "-m deepspeed=zero9,zero0",  # the sweep's jobs compose later than the main config, all before the first runs
        "deepspeed: no option 'zero9'; the options are zero0, zero2, zero2_offload, zero3, zero3_offload",
    ),
    "mtft-conversion": (
        "+adapter.rnak=8",
        "adapter.rnak: unknown key; did you mean adapter.rank? (set on the command line: +adapter.rnak=8)",
    ),
    "train-setup": (
        "data.max_seq_len=16",
        "data.max_seq_len: 16 leaves no room for text: the chat template alone takes 21 tokens (a one-turn "
        "conversation with empty user and assistant turns); use more than 21 (set on the command line: "
        "data.max_seq_len=16)",
    ),
}


@pytest.mark.parametrize(("override", "message"), CASES.values(), ids=CASES.keys())
def test_bad_config_is_one_line_and_exit_2(override, message, tmp_path):
    proc = run_cli([*shlex.split(override), f"trainer.output_dir={tmp_path}/run"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"mtft-train: error: {message}" in proc.stderr.splitlines()
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert not list(tmp_path.rglob("metrics.jsonl"))
