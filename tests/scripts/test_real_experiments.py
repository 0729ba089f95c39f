"""scripts/experiments/real.py --quick: every variant of the real-model experiments trains 2 steps on SmolLM2 and is
scored by mtft-eval, the report renders, and a second call only re-renders. The suite comes from tiny dictd and
WordNet files that test_real_suite writes, so CI needs no Debian packages. TRL's peer runs in a venv of its own
(peers/setup_trl.sh), which CI does not build: its test runs where that venv exists."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtft.adapters import compared_adapters
from tests.scripts.test_real_suite import write_sources

pytestmark = [pytest.mark.integration, pytest.mark.real_model, pytest.mark.experiments]

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "experiments"
PEER_PYTHON = SCRIPTS / "peers" / ".venv-trl" / "bin" / "python"


def _script(name: str):
    """A script of scripts/experiments/ as a module (its `main` is behind `__main__`)."""
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", SCRIPTS / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


REAL = _script("real")
SIZING = sys.modules["sizing"]  # as real.py imports it
REFERENCE_ADAPTER, REFERENCE_BALANCER = REAL.REFERENCE
# the adapters the registry compares at LoRA r16's budget, by run name (MoR1E with its prior: its run variant)
ADAPTERS = [
    SIZING.variant_name(config)
    for config in compared_adapters(REAL.LORA_RANK, 2.0 * REAL.LORA_RANK, runs=True).values()
]
# the experiment's design: each adapter with the reference balancer, each of the script's balancers on LoRA
VARIANTS = [(adapter, REFERENCE_BALANCER) for adapter in ADAPTERS] + [
    (REFERENCE_ADAPTER, balancer) for balancer in REAL.BALANCERS if balancer != REFERENCE_BALANCER
]


def _real(out: Path, *extra: str) -> subprocess.CompletedProcess:
    dictd, wordnet = out / "sources" / "dictd", out / "sources" / "wordnet"
    if not dictd.is_dir():
        write_sources(out / "sources")
    command = [sys.executable, str(SCRIPTS / "real.py"), "--quick", f"--out={out}", *extra]
    command += [f"--dictd-dir={dictd}", f"--wordnet-dir={wordnet}", "--train-words=6", "--val-words=2"]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=840,
        env={**os.environ, "MTFT_GGUF_CACHE": str(out / "gguf-cache")},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_every_variant_trains_and_is_scored_and_a_second_call_only_renders(tmp_path):
    _real(tmp_path, "--no-peer")
    report = (tmp_path / "docs" / "real.md").read_text()
    rows = [line.split(" | ") for line in report.splitlines() if line.startswith("| ")]
    listed = {(cells[0].lstrip("| "), cells[1]) for cells in rows}
    assert {("base (zero-shot)", "—"), *VARIANTS} <= listed
    best = report.split("also ran with CoBa: **")[1].split("**")[0]
    assert best in set(ADAPTERS) - {REFERENCE_ADAPTER} and (best, "coba") in listed
    trainable = {}
    for adapter, balancer in VARIANTS:
        run = tmp_path / "runs" / f"{adapter}-{balancer}" / "seed1"
        scored = json.loads((run / "eval" / "eval.json").read_text())
        assert set(scored["tasks"]) == {"translate_fr", "translate_es", "translate_de", "define", "hypernym"}
        assert json.loads((run / "summary.json").read_text())["steps"] == 2
        trainable[adapter] = json.loads((run / "summary.json").read_text())["trainable_parameters"]
    assert all(abs(n / trainable[REFERENCE_ADAPTER] - 1) < 0.15 for n in trainable.values()), trainable  # matched
    assert (tmp_path / "docs" / "real.png").stat().st_size > 0

    scored = sorted((tmp_path / "runs").glob("*/*/eval/eval.json"))
    before = {path: path.stat().st_mtime_ns for path in scored}
    again = _real(tmp_path, "--no-peer")
    assert "done lora / uniform / seed 1" in again.stdout
    assert {path: path.stat().st_mtime_ns for path in scored} == before  # nothing trained or scored again
    undated = [line for line in report.splitlines() if not line.startswith("Made by")]
    rendered = (tmp_path / "docs" / "real.md").read_text().splitlines()
    assert [line for line in rendered if not line.startswith("Made by")] == undated


@pytest.mark.skipif(
    not PEER_PYTHON.is_file(), reason="TRL's venv is not built: bash scripts/experiments/peers/setup_trl.sh"
)
def test_the_trl_peer_trains_and_mtft_eval_scores_its_adapter(tmp_path):
    _real(tmp_path, "--peer-only")
    run = tmp_path / "runs" / "trl-lora" / "seed1"
    summary = json.loads((run / "trl_summary.json").read_text())
    assert summary["steps"] == 2 and summary["train_tokens"] > 0
    assert json.loads((run / "eval" / "eval.json").read_text())["adapter"] == "peft"
    assert "| TRL SFTTrainer" in (tmp_path / "docs" / "real.md").read_text()
