"""mtft-eval and mtft-generate on a model that mtft did not train: the base model alone (the zero-shot row), and with
a plain PEFT adapter trained elsewhere (no mtft_adapter.json beside it)."""

from __future__ import annotations

import json
import math

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM

from mtft.cli.eval import main as eval_main
from mtft.cli.generate import main as generate_main
from mtft.data.synthetic import DEMO_DATA_DIR
from mtft.errors import ConfigError
from mtft.eval.generation import Decoding
from mtft.models import ModelConfig, TinyModelConfig, build_byte_tokenizer, build_tiny_model
from mtft.training.inference import BaseModel, generate, load_base


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory):
    """A tiny Llama saved as any HF checkpoint, and a PEFT LoRA adapter for it saved by PEFT itself (its B not
    zero, so it changes the model)."""
    root = tmp_path_factory.mktemp("base")
    tokenizer = build_byte_tokenizer()
    build_tiny_model(TinyModelConfig(hidden_size=32, num_heads=2, num_kv_heads=1), tokenizer).save_pretrained(
        root / "model"
    )
    tokenizer.save_pretrained(root / "model")
    torch.manual_seed(0)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(AutoModelForCausalLM.from_pretrained(root / "model"), lora).save_pretrained(root / "adapter")
    data = root / "data.yaml"
    data.write_text(f"tasks:\n  - {{name: add, path: {DEMO_DATA_DIR / 'add.jsonl'}}}\nmax_val_samples: 4\n")
    return root / "model", root / "adapter", data


def test_the_base_model_and_a_peft_adapter_are_scored_like_a_checkpoint(base_and_adapter, tmp_path, capsys):
    model, adapter, data = base_and_adapter
    eval_main([f"model={model}", f"data={data}", f"out={tmp_path / 'base'}", "max_new_tokens=4"])
    eval_main([f"model={model}", f"adapter={adapter}", f"data={data}", f"out={tmp_path / 'peft'}", "max_new_tokens=4"])
    base, tuned = (json.loads((tmp_path / name / "eval.json").read_text()) for name in ("base", "peft"))
    assert (base["adapter"], tuned["adapter"]) == ("none", "peft") and base["model"] == str(model)
    assert base["checkpoint"] is None and list(base["tasks"]) == list(tuned["tasks"]) == ["add"]
    for report in (base, tuned):
        assert math.isfinite(report["tasks"]["add"]["val_loss"]) and report["tasks"]["add"]["generated"] == 4
    assert base["tasks"]["add"]["val_loss"] != tuned["tasks"]["add"]["val_loss"]  # the adapter is applied
    assert len((tmp_path / "peft" / "predictions.jsonl").read_text().splitlines()) == 4
    assert "add" in capsys.readouterr().out  # the per-task table


def test_generate_answers_from_the_base_model_with_a_peft_adapter(base_and_adapter, capsys):
    model, adapter, _ = base_and_adapter
    generate_main([f"model={model}", f"adapter={adapter}", "prompt=What is 2+3?", "max_new_tokens=6"])
    printed = capsys.readouterr().out.strip().splitlines()[-1]
    direct = generate(
        load_base(BaseModel(ModelConfig(name_or_path=str(model)), adapter)), ["What is 2+3?"], Decoding(6)
    )
    assert printed == direct[0]
    plain = generate(load_base(BaseModel(ModelConfig(name_or_path=str(model)))), ["What is 2+3?"], Decoding(6))
    assert isinstance(plain[0], str)


def test_a_base_model_needs_data_and_an_adapter_directory_needs_peft_config(base_and_adapter, tmp_path, capsys):
    model, adapter, data = base_and_adapter
    with pytest.raises(ConfigError, match="^data: a base model has no run to take tasks from"):
        from mtft.training.offline_eval import EvalSettings, evaluate

        evaluate(None, tmp_path / "out", EvalSettings(), base=BaseModel(ModelConfig(name_or_path=str(model))))
    with pytest.raises(ConfigError, match="^adapter: .*: no adapter_config.json in it; not a PEFT adapter"):
        load_base(BaseModel(ModelConfig(name_or_path=str(model)), tmp_path))
    for argv in (
        [f"model={model}", f"checkpoint={tmp_path}", f"data={data}", f"out={tmp_path}"],
        [f"checkpoint={tmp_path}", f"adapter={adapter}", f"out={tmp_path}"],
    ):
        with pytest.raises(SystemExit) as stopped:
            eval_main(argv)
        assert stopped.value.code == 2
    assert "mtft-eval: error:" in capsys.readouterr().err
