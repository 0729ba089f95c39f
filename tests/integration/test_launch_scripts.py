"""scripts/launch/ run as users run them, two CPU processes each: DeepSpeed's launcher, a two-"node" torchrun
rendezvous on one machine, and the Slurm task wrapper, there with Slurm's SIGUSR1 warning sent to one rank only."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, launcher_env, small_data_overrides

pytestmark = pytest.mark.integration

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "launch"


def _overrides(small_tasks, out: Path, *extra: str) -> list[str]:
    return [*small_data_overrides(small_tasks), "trainer.max_steps=4", f"trainer.output_dir={out}", *extra]


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _finish(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]


def test_deepspeed_launcher_single_node(small_tasks, tmp_path):
    out = tmp_path / "run"
    command = ["bash", str(SCRIPTS / "deepspeed.sh"), *_overrides(small_tasks, out)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=launcher_env(NPROC="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stdout and (out / "summary.json").is_file()


def test_torchrun_multinode_rendezvous(small_tasks, tmp_path):
    """Two "nodes" of one process each, on one machine: the c10d rendezvous a real multi-node run uses."""
    out, port = tmp_path / "run", free_port()
    procs = [
        subprocess.Popen(
            ["bash", str(SCRIPTS / "torchrun_multinode.sh"), *_overrides(small_tasks, out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=launcher_env(NNODES="2", NODE_RANK=str(node), NPROC="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        )
        for node in (0, 1)
    ]
    _finish(procs)
    assert (out / "summary.json").is_file() and _steps(out) == [4]


def _slurm_tasks(args: list[str], port: str) -> list[subprocess.Popen]:
    """What `srun` starts for two tasks: the task wrapper, with Slurm's task numbering in the environment."""
    return [
        subprocess.Popen(
            ["bash", str(SCRIPTS / "slurm_task.sh"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=launcher_env(
                SLURM_PROCID=str(rank),
                SLURM_LOCALID=str(rank),
                SLURM_NTASKS="2",
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
        )
        for rank in (0, 1)
    ]


def test_slurm_tasks_save_on_sigusr1_to_one_rank_and_resume(small_tasks, tmp_path):
    """Slurm's warning reaches ranks at different moments; here only rank 1 gets it. The ranks agree on the step
    to stop at, save one complete checkpoint together and both exit 0; the requeued job resumes and finishes."""
    out = tmp_path / "run"
    args = _overrides(small_tasks, out, "trainer.max_steps=3000", "trainer.logging_steps=1", "trainer.resume=auto")
    procs = _slurm_tasks(args, free_port())
    deadline = time.time() + 180
    while time.time() < deadline and (not (out / "metrics.jsonl").exists() or len(_steps(out)) < 3):
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGUSR1)
    _finish(procs)
    (checkpoint,) = [p for p in out.glob("checkpoint-*") if (p / "COMPLETE").is_file()]
    assert {p.name for p in checkpoint.glob("rank_state_*.pt")} == {"rank_state_0.pt", "rank_state_1.pt"}
    stopped = int(checkpoint.name.split("-")[1])
    assert stopped < 3000 and not (out / "summary.json").exists()

    last = stopped + 2
    resumed = [arg if not arg.startswith("trainer.max_steps") else f"trainer.max_steps={last}" for arg in args]
    _finish(_slurm_tasks(resumed, free_port()))
    assert _steps(out) == list(range(1, last + 1)) and (out / "summary.json").is_file()
