"""Test helpers: compose the config as mtft-train would, small-data overrides, CLI runs, and the test matrices
collected from the adapter and balancer registries."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import socket
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mtft.adapters import ADAPTERS, AdapterMethod, adapter_variants
from mtft.adapters.moe import ExpertsRuntime
from mtft.balancers import BALANCERS, is_adaptive
from mtft.cli.train import CONFIG_DIR
from mtft.config.hydra import register, to_train_config
from mtft.config.train import TrainConfig

register()

LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# metrics that depend on the clock or the process, not on the computation: left out of exact comparisons
MEASURED = ("tokens_per_second", "samples_per_second", "throughput/", "memory/")


def computed(record: dict) -> dict:
    """A metrics.jsonl record without its measured (timing and memory) fields."""
    return {k: v for k, v in record.items() if not k.startswith(MEASURED)}


def compose_config(overrides: list[str] | None = None) -> TrainConfig:
    """The TrainConfig `mtft-train <overrides>` would build."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides or [])
    return to_train_config(cfg)


def compose_raw(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("train", overrides=overrides or []), resolve=True)


def small_data_overrides(paths: dict[str, Path], generations: int = 0) -> list[str]:
    """The given task files, small validation splits, and no sample generations unless asked (each generation
    is up to 64 sequential forwards: seconds per evaluation that most tests do not look at)."""
    tasks = ", ".join(f"{{name: {n}, path: '{p}'}}" for n, p in paths.items())
    return [f"data.tasks=[{tasks}]", "data.max_val_samples=8", f"trainer.eval_generations={generations}"]


def run_cli(
    args: list[str], timeout: int = 300, script: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`python -m mtft.cli.train ARGS` (or the installed `mtft-train` script) in a clean environment:
    no launch variables from this test process, W&B offline, plus `env`."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"WANDB_MODE": "offline"} | (env or {})
    command = [str(Path(sys.executable).parent / "mtft-train")] if script else [sys.executable, "-m", "mtft.cli.train"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env)


def wandb_records(run_dir: Path) -> list[dict]:
    """An offline W&B run's records, read by wandb's own reader (`wandb leet inspect --json`, which parses the
    run's .wandb transaction log)."""
    wandb = Path(sys.executable).parent / "wandb"
    proc = subprocess.run(
        [str(wandb), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def torchrun(args: list[str], ranks: int, cwd: Path, script: str = "-m mtft.cli.train") -> str:
    """`torchrun --standalone --nproc_per_node RANKS SCRIPT ARGS` in a clean environment (as `run_cli`), under a
    hard timeout; asserts it succeeded and returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"WANDB_MODE": "offline"}
    command = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", str(ranks)]
    proc = subprocess.run(
        [*command, *script.split(), *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


# ZeRO-3 keeps small parameters whole on every rank (stage3_param_persistence_threshold); 0 shards them all,
# as a real model's would be.
SHARD_EVERYTHING = {"zero_optimization": {"stage3_param_persistence_threshold": 0}}


def free_port() -> str:
    """A port on 127.0.0.1 that nothing listens on now, for a launcher's rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def launcher_env(**extra: str) -> dict[str, str]:
    """The environment a launcher test starts torchrun or a launch script with: no launch variables from pytest, the
    venv's python, torchrun and deepspeed first on PATH, and one thread per process, as a cluster's per-rank setting
    would give (two ranks on two cores otherwise fight for them)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS} | {"OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


def smora_coba_overrides(paths: dict[str, Path], out: Path, steps: int, checkpoint_every: int) -> list[str]:
    """The run the launcher tests lose workers and nodes from: SMoRA + CoBa, whose router bias and balancer state
    must survive a restart too, a record every step, a checkpoint and a full evaluation every `checkpoint_every`."""
    return [
        *small_data_overrides(paths),
        "adapter=smora",
        "adapter.bias_update_rate=0.01",
        "balancer=coba",
        "balancer.warmup_steps=2",
        "balancer.update_interval=1",
        f"trainer.max_steps={steps}",
        f"trainer.save_steps={checkpoint_every}",
        f"trainer.eval_steps={checkpoint_every}",
        "trainer.logging_steps=1",
        "trainer.micro_batch_size=4",
        f"trainer.output_dir={out}",
    ]


def shard_everything(directory: Path) -> str:
    """The override `deepspeed.config_file=...` of a DeepSpeed JSON (written into `directory`) under which ZeRO-3
    shards even the tiny model's parameters."""
    path = directory / "shard_everything.json"
    path.write_text(json.dumps(SHARD_EVERYTHING))
    return f"deepspeed.config_file={path}"


# Test matrices: collected from the registries, so a newly registered adapter or balancer is tested by every
# matrix it belongs to without anyone editing a list, and a test never decides by a method's name what it can do.


def adapter_names(kind: str = "all") -> list[str]:
    """Registered adapters, sorted: "all", or "moe", the mixtures of experts (their runtime is an ExpertsRuntime,
    which is what gives them routers, token masks, auxiliary losses and router statistics)."""
    if kind not in ("all", "moe"):
        raise ValueError(f"kind must be 'all' or 'moe', got {kind!r}")
    return sorted(name for name, method in ADAPTERS.items() if kind == "all" or is_mixture(method))


@cache
def is_mixture(method: AdapterMethod) -> bool:
    """Whether `method`, injected into the tiny model with its default config, hands the loop an ExpertsRuntime."""
    from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model

    cfg = method.config()
    model = method.inject(build_tiny_model(TinyModelConfig(), build_byte_tokenizer()), cfg)
    return isinstance(method.runtime(model, cfg), ExpertsRuntime)


def adapter_cases(kind: str = "all") -> list:
    """`pytest.param(name, settings)` for each adapter of `adapter_names(kind)`: its defaults (settings {}), then
    each of the settings its config declares in `matrix_variants` (e.g. MoR1E's dense routing)."""
    names = adapter_names(kind)
    return [
        pytest.param(name, settings, id=run) for run, (name, settings) in adapter_variants().items() if name in names
    ]


def balancer_names(kind: str = "all") -> list[str]:
    """Registered balancers, sorted: "all", or "adaptive", those whose weights follow the losses (they override
    `observe` or `after_step`, the only ways losses reach a balancer)."""
    if kind not in ("all", "adaptive"):
        raise ValueError(f"kind must be 'all' or 'adaptive', got {kind!r}")
    return sorted(name for name, method in BALANCERS.items() if kind == "all" or is_adaptive(method))


# Settings that make an adaptive balancer move within a few steps (the defaults wait 100 steps, or average over
# windows of 20), applied by field name to whichever balancer's config has that field.
SHORT_RUN = {"warmup_steps": 2, "update_interval": 1, "window": 2}


def short_run_overrides(name: str) -> list[str]:
    """`balancer.<field>=<value>` for each SHORT_RUN field that balancer `name`'s config has."""
    fields = {f.name for f in dataclasses.fields(BALANCERS[name].config)}
    return [f"balancer.{key}={value}" for key, value in SHORT_RUN.items() if key in fields]


def moved_key(name: str) -> str:
    """The metrics.jsonl key suffix that balancer `name`'s weights move at its defaults: `weight`, the loss's, or
    `mix`, the sampler's (`apply_to=sampling`, ODM's default)."""
    return "weight" if BALANCERS[name].config().to_loss else "mix"


def handle_attributes(source: str, handle: str) -> set[str]:
    """The attributes that the code in `source` reads of `handle` (e.g. "balancer"), whether a function holds it
    as a local (`balancer.observe`) or the recipe as its own attribute (`self.balancer.observe`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        holder = node.value
        if isinstance(holder, ast.Attribute) and isinstance(holder.value, ast.Name) and holder.value.id == "self":
            name = holder.attr
        else:
            name = holder.id if isinstance(holder, ast.Name) else None
        if name == handle:
            found.add(node.attr)
    return found
