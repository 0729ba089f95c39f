"""torchrun's restarts and a peer that hangs, at the level of mtft's process group (training/engine.py's
init_distributed, distributed.py's start_process_group): two ranks under real torchrun, gloo, hard timeouts.

- A group torchrun restarts after a lost worker joins again, with static and with c10d rendezvous. The agent's
  store outlives the killed attempt; rank 0 of the new attempt starts late, so a rank that read the old attempt's
  keys would dial a dead process (without mtft's fresh namespace this fails every time). The restarted group keeps
  the first attempt's value of a key (the output directory's).
- Rank 0's solo work longer than the collective timeout passes: the others wait with their own allowance.
- A rank that hangs (SIGSTOP: alive, not dying) makes the other exit non-zero within the collective timeout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, launcher_env

pytestmark = pytest.mark.integration

GROUP = """
import os, signal, sys, time
import torch, torch.distributed as dist
from mtft.distributed import kept_across_restarts, rank_zero_first
from mtft.training.engine import init_distributed

attempt, scenario = int(os.environ["TORCHELASTIC_RESTART_COUNT"]), sys.argv[1]
if scenario == "restart" and attempt == 1 and os.environ["RANK"] == "0":
    time.sleep(3)  # the restarted rank 1 reaches the store first, where the killed attempt's keys still are
rank, world = init_distributed(collective_timeout=float(sys.argv[2]))
kept = kept_across_restarts("output_dir", f"runs/attempt-{attempt}")
total = torch.ones(1)
dist.all_reduce(total)
if scenario == "restart" and attempt == 0 and rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)  # a lost worker, after the group formed
if scenario == "solo":
    with rank_zero_first():
        if rank == 0:
            time.sleep(3 * float(sys.argv[2]))  # rank 0's solo work, longer than the collective timeout
if scenario == "hang" and rank == 1:
    os.kill(os.getpid(), signal.SIGSTOP)
start = time.monotonic()
try:
    for _ in range(3):
        dist.all_reduce(total)
except RuntimeError as err:
    print(f"rank {rank} failed after {time.monotonic() - start:.1f} s: {err}", flush=True)
    sys.exit(1)
print(f"rank {rank} attempt {attempt} sum {total.item():g} kept {kept}", flush=True)
"""


def _torchrun(tmp_path: Path, rendezvous: str, *args: str, restarts: int = 0, timeout: float = 240):
    script = tmp_path / "group.py"
    script.write_text(GROUP)
    port = free_port()
    endpoint = (["--rdzv-backend", "static", "--master-addr", "127.0.0.1", "--master-port", str(port)]
                if rendezvous == "static" else
                ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test"])  # fmt: skip
    command = [str(Path(sys.executable).parent / "torchrun"), "--nnodes", "1", "--nproc-per-node", "2",
               "--max-restarts", str(restarts), "--monitor-interval", "0.2",
               *endpoint, str(script), *args]  # fmt: skip
    env = launcher_env()
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    return proc, time.monotonic() - started


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_a_group_torchrun_restarts_after_a_lost_worker_joins_again(tmp_path, rendezvous):
    proc, _ = _torchrun(tmp_path, rendezvous, "restart", "60", restarts=1)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for rank in (0, 1):  # the second attempt finished, with the first attempt's output directory
        assert f"rank {rank} attempt 1 sum 16 kept runs/attempt-0" in proc.stdout, proc.stdout


def test_rank_zeros_solo_work_outlasts_the_collective_timeout(tmp_path):
    proc, _ = _torchrun(tmp_path, "c10d", "solo", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "rank 1 attempt 0 sum 16" in proc.stdout


def test_a_hung_rank_ends_the_other_within_the_collective_timeout(tmp_path):
    proc, _ = _torchrun(tmp_path, "c10d", "hang", "5")
    assert proc.returncode != 0
    failed = [line for line in proc.stdout.splitlines() if line.startswith("rank 0 failed after")]
    assert failed and "Timed out" in failed[0], proc.stdout + proc.stderr[-3000:]
    assert float(failed[0].split()[4]) < 5 + 5, failed  # the timeout, and no more than a few seconds over it
