"""mtft-serve on a real model: SmolLM2-135M-Instruct (from its GGUF) fine-tuned a few steps in fp32 with each
registered adapter (full fine-tuning aside), served from the checkpoint and asked through the `openai` client. Greedy
answers are the same streamed and not, and equal mtft-generate's for the same prompts, asked one at a time and by
8 concurrent clients, whose requests the server batches (its /metrics says so); then SIGTERM stops it with exit 0.

test_server.py checks the same on the tiny random model with LoRA; here the weights are a pretrained model's, every
prompt carries its chat template's system prompt, prompts of different lengths are left-padded into one batch, and
each adapter (MoR1E's prior, which routes each row on its own prompt, among them) is the one trained."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mtft.adapters import ADAPTERS, adapter_variants
from mtft.training.loop import train
from tests.helpers import LAUNCH_VARS, compose_config, small_data_overrides
from tests.integration import test_gguf_model
from tests.serve.test_server import Served

pytestmark = [pytest.mark.integration, pytest.mark.real_model, pytest.mark.slow]

smollm2 = test_gguf_model.smollm2  # the fixture: (directory, file name) of the installed SmolLM2 GGUF

STEPS, TOKENS = 2, 12
# of different lengths, so that each batch left-pads them differently
PROMPTS = [
    "What is 82 + 42?",
    "What is 6229 + 22?",
    "Review: the service was excellent. Sentiment?",
    "Review: the room was disappointing and the staff did not care at all. Sentiment?",
    "What is 7 + 5?",
    "Name a colour.",
    "Review: fine. Sentiment?",
    "What is 44 + 7307, and is the sum even?",
]
# every adapter run, at its defaults and at each setting its config declares (MoR1E's prior among them), except the
# methods that train the whole model rather than an adapter
RUNS = [run for run, (name, _) in adapter_variants(runs=True).items() if not ADAPTERS[name].config.is_full_model]


@pytest.fixture(scope="module")
def one_thread_each(tmp_path_factory):
    """One dequantized copy of the GGUF for every process of this module, in the test's own directory; and one
    thread for each of them (training here, mtft-generate, the server): processes that share the cores with more
    threads than cores spin in OpenMP barriers (on 2 busy cores, mtft-generate took 130 s for 8 answers, not 7)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTFT_GGUF_CACHE", str(tmp_path_factory.mktemp("gguf-cache")))
        patch.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_num_threads(threads)


def _train(run: str, smollm2: tuple[Path, str], tasks: dict[str, Path], out: Path) -> Path:
    directory, gguf = smollm2
    name, settings = adapter_variants(runs=True)[run]
    train(
        compose_config(
            [
                "model=hf",
                f"model.name_or_path={directory}",
                f"model.gguf_file={gguf}",
                f"adapter={name}",
                *(f"adapter.{key}={value}" for key, value in settings.items()),
                *small_data_overrides(tasks),
                "data.max_seq_len=64",
                "deepspeed.precision=fp32",
                "trainer.micro_batch_size=2",
                "trainer.lr=1e-3",
                "trainer.warmup_steps=0",
                f"trainer.max_steps={STEPS}",
                f"trainer.eval_steps={STEPS}",
                f"trainer.output_dir={out}",
            ]
        )
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["deepspeed"]["precision"] == "fp32"
    return out / f"checkpoint-{STEPS}"


def _generated(checkpoint: Path, directory: Path) -> list[str]:
    """mtft-generate's greedy answers to PROMPTS, in a process of its own."""
    prompts, out = directory / "prompts.jsonl", directory / "generated.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    command = ["-m", "mtft.cli.generate", f"checkpoint={checkpoint}", f"prompts={prompts}", f"out={out}"]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    proc = subprocess.run(
        [sys.executable, *command, f"max_new_tokens={TOKENS}"], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return [json.loads(line)["output"] for line in out.read_text().splitlines()]


def _chat(client, model: str, prompt: str) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=TOKENS, temperature=0
    )
    return reply.choices[0].message.content


@pytest.mark.parametrize("run", RUNS)
def test_a_fine_tuned_smollm2_served_answers_as_mtft_generate_alone_and_batched(
    run, smollm2, one_thread_each, small_tasks, tmp_path
):
    checkpoint = _train(run, smollm2, small_tasks, tmp_path / run)
    generated = _generated(checkpoint, tmp_path)
    assert all(generated) and len(set(generated)) > 1, generated  # real answers, not one empty or constant string

    served = Served(checkpoint)
    try:
        client = served.client()
        whole = _chat(client, run, PROMPTS[0])
        asked = dict(model=run, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=TOKENS, temperature=0)
        chunks = client.chat.completions.create(**asked, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole

        alone = [_chat(client, run, p) for p in PROMPTS]
        before = served.get("/metrics")["batch_sizes"]
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map(lambda p: _chat(client, run, p), PROMPTS))
        after = served.get("/metrics")["batch_sizes"]
    finally:
        code = served.stop()
    differ = {
        prompt: {"generate": g, "alone": a, "together": t}
        for prompt, g, a, t in zip(PROMPTS, generated, alone, together, strict=True)
        if not g == a == t
    }
    assert not differ, json.dumps(differ, indent=1)
    assert any(int(size) > 1 and after[size] > before.get(size, 0) for size in after), (before, after)
    assert code == 0, "".join(served.lines)[-3000:]
