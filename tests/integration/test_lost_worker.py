"""A worker lost under `torchrun --max-restarts 1 ... trainer.resume=auto` (gloo, ZeRO-2, SMoRA + CoBa, 24 steps, a
checkpoint every 8): rank 1 is killed (SIGKILL) during step 12, or halfway through writing checkpoint-16. torchrun
restarts the group, which joins again (mtft's process group), finds the first attempt's output directory, resumes
from the newest COMPLETE checkpoint (8; a half-written 16 is never used) and ends equal to the unbroken run: every
record's losses, weights and router loads, and a bitwise-identical adapter. On one node with two processes, and on
two simulated nodes (one process each, c10d rendezvous on 127.0.0.1)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import computed, free_port, launcher_env, smora_coba_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS, SAVE = 24, 8
LOSE_A_WORKER = Path(__file__).with_name("lose_a_worker.py")
TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def _overrides(small_tasks, out: Path) -> list[str]:
    return [*smora_coba_overrides(small_tasks, out, STEPS, SAVE), "deepspeed=zero2", "trainer.resume=auto"]


def _launch(layout: str, args: list[str], lose: str | None, restarts: int = 1) -> list[subprocess.CompletedProcess]:
    """The run under torchrun with `restarts` allowed: one node of two processes, or two nodes of one."""
    env = launcher_env(**({"MTFT_LOSE": lose} if lose else {}))
    script = [str(LOSE_A_WORKER)] if lose else ["-m", "mtft.cli.train"]
    port = free_port()
    common = ["--max-restarts", str(restarts), "--monitor-interval", "0.2", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "lost-worker"]  # fmt: skip
    nodes = [["--nnodes", "1", "--nproc-per-node", "2"]] if layout == "one_node" else [
        ["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1"] for node in (0, 1)]  # fmt: skip
    procs = [subprocess.Popen([TORCHRUN, *node, *common, *script, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for node in nodes]  # fmt: skip
    done = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return done


def _records(out: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def unbroken(small_tasks, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unbroken") / "run"
    for proc in _launch("one_node", _overrides(small_tasks, out), None):
        assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("lose", ["step:12", "save:16"])
@pytest.mark.parametrize("layout", ["one_node", "two_nodes"])
def test_a_restart_after_a_lost_worker_ends_as_the_unbroken_run(small_tasks, tmp_path, unbroken, layout, lose):
    out = tmp_path / "run"
    launched = _launch(layout, _overrides(small_tasks, out), lose)
    for proc in launched:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    said = "".join(proc.stdout for proc in launched)
    assert f"mtft: resumed from {out / 'checkpoint-8'} at step 8" in said, said[-3000:]
    expected, got = _records(unbroken), _records(out)
    assert sorted(got) == list(range(1, STEPS + 1))  # the records the lost attempt wrote past step 8 were replaced
    for step in range(SAVE + 1, STEPS + 1):
        assert computed(got[step]) == computed(expected[step]), step
    final = f"checkpoint-{STEPS}/adapter/adapter_model.safetensors"
    assert (out / final).read_bytes() == (unbroken / final).read_bytes()
    assert (out / "checkpoint-16" / "COMPLETE").is_file()  # rewritten whole by the restarted group


def test_a_hung_rank_ends_the_run_within_the_collective_timeout_naming_it(small_tasks, tmp_path):
    """Rank 1 stops (SIGSTOP) at step 4 and never answers: rank 0 exits non-zero once its collective has waited
    trainer.collective_timeout (10 s), saying what that means; torchrun then ends the group."""
    args = [*_overrides(small_tasks, tmp_path / "run"), "trainer.collective_timeout=10"]
    started = time.monotonic()
    (proc,) = _launch("one_node", args, "hang:4", restarts=0)
    assert proc.returncode != 0
    assert "rank 0: a peer did not answer within the collective timeout" in proc.stderr, proc.stderr[-3000:]
    assert "(trainer.collective_timeout=10 s)" in proc.stderr
    assert time.monotonic() - started < 240  # startup, 3 steps, the 10 s timeout and torchrun's grace period
