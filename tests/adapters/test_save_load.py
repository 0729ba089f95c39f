"""Every adapter: train a few steps, save, load onto a fresh base in a new process, get the same logits.

(tests/training/checkpoint/test_files.py checks that such a load equals the trained engine's own weights.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch

import mtft
from mtft.adapters import adapter_variants
from mtft.training.loop import train
from tests.helpers import adapter_names, compose_config, small_data_overrides

# run name -> (adapter, extra overrides): every registered adapter with its defaults and its declared variants
RUNS = {
    run: (name, [f"adapter.{key}={value}" for key, value in settings.items()])
    for run, (name, settings) in adapter_variants(runs=True).items()
}
INPUT_IDS = [[5, 80, 81, 82, 99, 100, 40, 41]]

RELOAD = """
import json, sys, torch
import mtft
from mtft.models import TinyModelConfig
from mtft.models import build_byte_tokenizer, build_tiny_model
out = {}
for directory in sys.argv[2:]:
    model = mtft.load_adapter(build_tiny_model(TinyModelConfig(), build_byte_tokenizer()), directory).eval()
    input_ids = torch.tensor(json.loads(sys.argv[1]))
    mtft.runtime_of(model).before_generate({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)})
    with torch.no_grad():
        out[directory] = model(input_ids=input_ids).logits.tolist()
print(json.dumps(out))
"""


@pytest.mark.integration
def test_saved_adapters_reload_in_a_new_process(dist_group, small_tasks, tmp_path):
    trained = {}
    mixtures = adapter_names("moe")
    for name, (adapter, overrides) in RUNS.items():
        out = tmp_path / name
        cfg = compose_config(
            [
                f"adapter={adapter}",
                *overrides,
                *small_data_overrides(small_tasks),
                "trainer.max_steps=4",
                "trainer.lr=1e-2",
            ]
            + [f"trainer.output_dir={out}", "trainer.logging_steps=1"]
        )
        train(cfg)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        if adapter in mixtures:  # router statistics reach metrics.jsonl
            assert "router/mean_entropy" in records[-1] and "router/dead_experts" in records[-1]
            assert any(k.endswith("/load") for k in records[-1])
        directory = out / "checkpoint-4" / "adapter"
        assert json.loads((directory / "mtft_adapter.json").read_text())["name"] == adapter
        trained[str(directory)] = name

    command = [sys.executable, "-c", RELOAD, json.dumps(INPUT_IDS), *trained]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reloaded = json.loads(proc.stdout.strip().splitlines()[-1])

    from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model

    base = build_tiny_model(TinyModelConfig(), build_byte_tokenizer()).eval()
    with torch.no_grad():
        base_logits = base(input_ids=torch.tensor(INPUT_IDS)).logits
    for directory, name in trained.items():
        logits = torch.tensor(reloaded[directory])
        assert (logits - base_logits).abs().max() > 1e-4, name  # the adapter was trained and is in effect
        fresh = mtft.load_adapter(build_tiny_model(TinyModelConfig(), build_byte_tokenizer()), directory).eval()
        ids = torch.tensor(INPUT_IDS)
        mtft.runtime_of(fresh).before_generate({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        with torch.no_grad():
            torch.testing.assert_close(fresh(input_ids=torch.tensor(INPUT_IDS)).logits, logits, atol=1e-6, rtol=0)
    lora_dir = next(d for d in trained if (Path(d) / "adapter_config.json").is_file())  # saved in PEFT's format
    peft_model = peft.PeftModel.from_pretrained(build_tiny_model(TinyModelConfig(), build_byte_tokenizer()), lora_dir)
    with torch.no_grad():
        peft_logits = peft_model.eval()(input_ids=torch.tensor(INPUT_IDS)).logits
    torch.testing.assert_close(peft_logits, torch.tensor(reloaded[lora_dir]), atol=1e-6, rtol=0)
