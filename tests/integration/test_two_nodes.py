"""Two nodes on one machine, through scripts/launch/torchrun_multinode.sh itself: `torchrun --nnodes 2`, one process
on each node, c10d rendezvous on 127.0.0.1, gloo. Under ZeRO-2 and ZeRO-3 (SMoRA + CoBa, 8 steps, a checkpoint
every 4) the run trains, saves, resumes and exports, and equals the one-node run of two processes: every record,
and the exported adapter. A whole node lost (its torchrun and its worker, SIGKILL) ends the other node's run
within a bounded time, with a message that says a peer is gone."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.helpers import computed, free_port, launcher_env, shard_everything, smora_coba_overrides, torchrun

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 8
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "launch" / "torchrun_multinode.sh"


def _overrides(small_tasks, out: Path, stage: str, tmp: Path, *extra: str) -> list[str]:
    zero = [f"deepspeed={stage}", *([shard_everything(tmp)] if stage == "zero3" else [])]
    return [*smora_coba_overrides(small_tasks, out, STEPS, 4), *zero, *extra]


def _env() -> dict[str, str]:
    return launcher_env(WANDB_MODE="offline")


def _nodes(args: list[str]) -> list[subprocess.Popen]:
    """Both nodes' `torchrun_multinode.sh` (`exec`: each one's pid is its torchrun's)."""
    env, port = _env(), free_port()
    return [
        subprocess.Popen(
            ["bash", str(SCRIPT), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env
            | {
                "NNODES": "2",
                "NODE_RANK": str(node),
                "NPROC": "1",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "RUN_ID": f"two-nodes-{port}",
            },  # fmt: skip
        )
        for node in (0, 1)
    ]


def _kill_node(pid: int) -> None:
    """SIGKILL to a node's torchrun and every process under it at once (torchrun starts each worker in a session of
    its own, so the node's process group alone would leave its worker running)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(command name)": state, ppid, ...
            parents[int(stat.parent.name)] = int(fields[1])
    tree = [pid]
    for member in tree:
        tree += [child for child, parent in parents.items() if parent == member]
    for member in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)


def _finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-4000:]


def _records(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_nodes_train_save_resume_and_export_as_one_node(small_tasks, tmp_path, stage):
    one_node, two_nodes, resumed = tmp_path / "one_node", tmp_path / "two_nodes", tmp_path / "resumed"
    torchrun(_overrides(small_tasks, one_node, stage, tmp_path), 2, tmp_path)
    _finish(_nodes(_overrides(small_tasks, two_nodes, stage, tmp_path)))
    expected, got = _records(one_node), _records(two_nodes)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in got:  # the same ranks and reduction order: identical, not merely close
        assert computed(got[step]) == computed(expected[step]), step

    shutil.copytree(two_nodes, resumed)  # stopped after step 4: the later files are gone
    shutil.rmtree(resumed / f"checkpoint-{STEPS}")
    (resumed / "summary.json").unlink()
    _finish(_nodes(_overrides(small_tasks, resumed, stage, tmp_path, "trainer.resume=auto")))
    again = _records(resumed)
    assert sorted(again) == list(range(1, STEPS + 1))
    for step in range(5, STEPS + 1):
        assert computed(again[step]) == computed(expected[step]), step

    exported = tmp_path / "exported"  # rebuilt from the two nodes' shards by DeepSpeed's zero_to_fp32
    checkpoint = resumed / f"checkpoint-{STEPS}"
    export = [sys.executable, "-m", "mtft.cli.export", f"checkpoint={checkpoint}", f"out={exported}"]
    done = subprocess.run([*export, "from_shards=true"], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    mine = load_file(exported / "adapter_model.safetensors")
    reference = load_file(one_node / f"checkpoint-{STEPS}" / "adapter" / "adapter_model.safetensors")
    assert mine.keys() == reference.keys()
    assert all(mine[key].equal(reference[key]) for key in reference)


def test_a_lost_node_ends_the_other_within_a_bounded_time(small_tasks, tmp_path):
    out = tmp_path / "run"
    nodes = _nodes(_overrides(small_tasks, out, "zero2", tmp_path, "trainer.max_steps=5000"))
    try:
        deadline = time.monotonic() + 300
        while not (out / "metrics.jsonl").is_file() or len(_records(out)) < 3:
            assert time.monotonic() < deadline and nodes[0].poll() is None, "the run did not start"
            time.sleep(0.2)
        _kill_node(nodes[1].pid)
        lost = time.monotonic()
        try:
            _, stderr = nodes[0].communicate(timeout=180)
        except subprocess.TimeoutExpired:
            _kill_node(nodes[0].pid)
            _, stderr = nodes[0].communicate()
            raise AssertionError(f"node 0 still ran 180 s after node 1 was lost:\n{stderr[-5000:]}") from None
        assert nodes[0].returncode != 0
        assert time.monotonic() - lost < 120, "the surviving node took too long to give up"
        assert "a peer is gone: its process or its node was lost" in stderr, stderr[-4000:]
    finally:
        for node in nodes:
            if node.poll() is None:
                _kill_node(node.pid)
                node.wait()
