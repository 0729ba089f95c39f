"""Safety properties a user relies on without reading the code: no remote code unless asked, no pickle that can
run code, no object built from a config's `_target_`, and task files that training only ever reads.

Secrets are covered elsewhere: tests/logging/test_secrets.py and tests/integration/test_wandb_offline.py.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest
import torch

import mtft
from mtft.data import synthetic
from mtft.errors import ConfigError
from mtft.models import ModelConfig
from mtft.training.checkpoint.files import load_rank_state
from mtft.training.loop import train
from tests.helpers import compose_config, compose_raw, small_data_overrides

PACKAGE = Path(mtft.__file__).parent
CONFIGS = PACKAGE / "configs"


def _calls(predicate) -> list[tuple[str, ast.Call]]:
    """(file:line, call) for every call in mtft/ that `predicate(call)` picks."""
    found = []
    for file in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Call) and predicate(node):
                found.append((f"{file.relative_to(PACKAGE.parent)}:{node.lineno}", node))
    return found


def _method(name: str, receiver=None):
    def pick(call: ast.Call) -> bool:
        func = call.func
        if not (isinstance(func, ast.Attribute) and func.attr == name):
            return False
        return receiver is None or (isinstance(func.value, ast.Name) and receiver(func.value.id))

    return pick


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


# ---- remote code --------------------------------------------------------------------------------------------------


def test_trust_remote_code_is_off_unless_set():
    assert ModelConfig().trust_remote_code is False
    for choice in sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml")):
        assert compose_config([f"model={choice}"]).model.trust_remote_code is False, choice


@pytest.mark.parametrize("trust", [False, True])
def test_trust_remote_code_reaches_every_from_pretrained(monkeypatch, trust):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model, load_model_and_tokenizer

    seen = {}

    def tokenizer(name, **kwargs):
        seen["tokenizer"] = kwargs.get("trust_remote_code")
        return build_byte_tokenizer()

    def model(name, **kwargs):
        seen["model"] = kwargs.get("trust_remote_code")
        return build_tiny_model(TinyModelConfig(), build_byte_tokenizer())

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model)
    load_model_and_tokenizer(ModelConfig(name_or_path="some/model", trust_remote_code=trust))
    assert seen == {"tokenizer": trust, "model": trust}


def test_every_auto_class_load_passes_trust_remote_code():
    """Auto classes are where a hub repo's own code would run; each call in mtft/ must pass the config's flag
    (the loads by a concrete class or by PEFT resolve no code from the hub). And nothing passes a literal True."""
    auto_loads = _calls(_method("from_pretrained", lambda name: name.startswith("Auto")))
    assert len(auto_loads) >= 2  # the tokenizer and the model in mtft/models/loading.py
    for where, call in auto_loads:
        flag = _keyword(call, "trust_remote_code")
        assert flag is not None and not isinstance(flag, ast.Constant), where
    for where, call in _calls(lambda call: _keyword(call, "trust_remote_code") is not None):
        assert not (isinstance(_keyword(call, "trust_remote_code"), ast.Constant)), where


# ---- pickle -------------------------------------------------------------------------------------------------------


def test_every_torch_load_is_weights_only_and_nothing_unpickles():
    loads = _calls(_method("load", lambda name: name == "torch"))
    assert loads  # mtft/training/checkpoint/files.py reads the rank state
    for where, call in loads:
        flag = _keyword(call, "weights_only")
        assert isinstance(flag, ast.Constant) and flag.value is True, where
    for file in PACKAGE.rglob("*.py"):
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(ast.parse(file.read_text()))
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
        }
        assert not imported & {"pickle", "dill", "cloudpickle", "joblib", "marshal"}, file


def test_weights_are_written_as_safetensors_only(dist_group, small_tasks, tmp_path):
    """mtft's torch.save writes only the per-rank state (RNG and data position: no weights, loadable with
    weights_only); no save_pretrained of a model turns safetensors off. (DeepSpeed's engine checkpoint is
    DeepSpeed's own .pt format.)"""
    savers = {where.split(":")[0] for where, _ in _calls(_method("save", lambda name: name == "torch"))}
    assert savers == {"mtft/training/checkpoint/files.py"}
    model_saves = _calls(_method("save_pretrained", lambda name: "tokenizer" not in name))
    assert model_saves
    for where, call in model_saves:
        flag = _keyword(call, "safe_serialization")  # transformers 5 writes only safetensors; PEFT's default
        assert flag is None or (isinstance(flag, ast.Constant) and flag.value is True), where

    train(
        compose_config([*small_data_overrides(small_tasks), f"trainer.output_dir={tmp_path}", "trainer.max_steps=1"])
    )
    adapter = tmp_path / "checkpoint-1" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    assert not [p.name for p in adapter.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    rank_state = load_rank_state(tmp_path / "checkpoint-1" / "rank_state_0.pt")
    with torch.serialization.safe_globals([]):  # no NumPy (or other) types allowed: plain values and tensors
        assert torch.load(tmp_path / "checkpoint-1" / "rank_state_0.pt", weights_only=True).keys() == rank_state.keys()
    tensors = [t for t in _leaves(rank_state) if isinstance(t, torch.Tensor)]
    assert tensors and all(t.dtype == torch.uint8 for t in tensors)  # RNG states only


def _leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


# ---- _target_ -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("+adapter._target_=os.system", "adapter._target_"),
        ("+balancer._target_=os.system", "balancer._target_"),
        ("+trainer._target_=os.system", "trainer._target_"),
        ("+model._target_=os.system", "model._target_"),
        ("+_target_=os.system", "_target_"),
    ],
)
def test_target_in_a_config_is_an_unknown_key(monkeypatch, override, key):
    called = []
    monkeypatch.setattr(os, "system", lambda *args: called.append(args))
    with pytest.raises(ConfigError) as raised:
        compose_config([override])
    assert raised.value.key == key and "unknown key" in str(raised.value)
    assert not called


def test_target_in_a_task_spec_is_an_unknown_key(monkeypatch):
    """Below Hydra's typed schema too: the one conversion to dataclasses knows no `_target_` anywhere."""
    from mtft.config.train import build_train_config

    called = []
    monkeypatch.setattr(os, "system", lambda *args: called.append(args))
    raw = compose_raw()
    raw["data"]["tasks"][0]["_target_"] = "os.system"
    with pytest.raises(ConfigError) as raised:
        build_train_config(raw)
    assert raised.value.key == "data.tasks[0]._target_" and not called


def test_nothing_is_built_from_a_config_path():
    """Objects come from mtft's registries (explicit dicts), never from a dotted path in a config."""
    locators = {"instantiate", "get_class", "get_method", "get_object", "locate", "_locate", "import_module"}
    # registry.import_methods imports the modules that pkgutil finds in a method package's own folder, by the
    # package's own name: never a name that a config holds
    allowed = {PACKAGE / "registry.py": {"import_module"}}
    for file in PACKAGE.rglob("*.py"):
        tree = ast.parse(file.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not (names & locators) - allowed.get(file, set()), (file, names & locators)
        assert "_target_" not in file.read_text(), file
    shipped = sorted(CONFIGS.rglob("*.yaml"))
    assert len(shipped) > 20, CONFIGS  # the packaged tree itself, not an empty glob of a moved directory
    for file in shipped:
        assert "_target_" not in file.read_text(), file


# ---- task files are only read -------------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under `root` (itself included): content, modification time, mode. A directory's mtime moves
    when anything is created in it, even if removed again."""
    entries = {}
    for path in [root, *sorted(root.rglob("*"))]:
        info = path.stat()
        content = path.read_bytes() if path.is_file() else None
        entries[str(path.relative_to(root))] = (content, info.st_mtime_ns, info.st_mode)
    return entries


def test_training_only_reads_the_task_files(dist_group, tmp_path):
    """A JSONL file and a saved `datasets` directory (whose loader could write cache files beside the data)."""
    import datasets

    data = tmp_path / "data"
    data.mkdir()
    (data / "add.jsonl").write_text("".join(json.dumps(s) + "\n" for s in synthetic.generate("add")[:64]))
    datasets.Dataset.from_list(synthetic.generate("sentiment")[:64]).save_to_disk(str(data / "sentiment"))
    before = _snapshot(data)
    paths = {"add": data / "add.jsonl", "sentiment": data / "sentiment"}
    overrides = [*small_data_overrides(paths), f"trainer.output_dir={tmp_path / 'out'}", "trainer.max_steps=2"]
    train(compose_config([*overrides, "trainer.micro_batch_size=4", "data.num_proc=1"]))
    assert (tmp_path / "out" / "checkpoint-2").is_dir()  # it really trained
    assert _snapshot(data) == before
