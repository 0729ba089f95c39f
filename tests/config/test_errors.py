"""The config-error rows of the reliability matrix, in process: each bad config is a one-line ConfigError that
names its key and the allowed values or the nearest valid key, raised before any model loads.

The same errors through a real `mtft-train` process (exit code, stderr, nothing trained) are in
tests/cli/test_train_errors.py.
"""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from mtft.adapters import ADAPTERS
from mtft.balancers import BALANCERS
from mtft.cli.train import CONFIG_DIR
from mtft.config.hydra import config_error, to_train_config
from mtft.data.config import DataConfig, TaskSpec
from mtft.data.tasks import load_tasks
from mtft.data.tokenize import chat_template_overhead, check_max_seq_len
from mtft.errors import ConfigError, DataError, unknown_key
from mtft.models import ModelConfig, build_byte_tokenizer, load_tokenizer
from tests.helpers import compose_config

DEMO_TASKS = "add, reverse, sort, sentiment"


def reported(overrides: list[str], config_dir: str = str(CONFIG_DIR)) -> ConfigError:
    """The ConfigError mtft-train reports for `overrides`, whichever layer rejects them: Hydra's composition
    (cli/train.py's main turns it into one line) or mtft's conversion to the typed config."""
    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            to_train_config(compose("train", overrides=overrides))
    except (HydraException, OmegaConfBaseException) as err:
        return config_error(err)
    except ConfigError as err:
        return err
    pytest.fail(f"{overrides} were accepted")


def options(group: str) -> str:
    registered = {"adapter": ADAPTERS, "balancer": BALANCERS}.get(group, {})
    aliases = getattr(registered, "aliases", {})
    return ", ".join(sorted({p.stem for p in (CONFIG_DIR / group).glob("*.yaml")} | set(registered) | set(aliases)))


# ---- 1. an unknown group option -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("group", "option"), [("adapter", "nosuch"), ("deepspeed", "zero9")])
def test_unknown_group_option_lists_the_options(group, option):
    err = reported([f"{group}={option}"])
    assert err.key == group
    assert str(err) == f"{group}: no option '{option}'; the options are {options(group)}"


def test_unknown_option_lists_a_users_own_options_too(tmp_path):
    """`--config-dir` groups (here via the search path it sets) are among the options offered."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text("tasks:\n  - {name: qa, path: /x/qa.jsonl}\n")
    err = reported([f"hydra.searchpath=[file://{tmp_path}]", "data=nosuch"])
    assert err.key == "data" and str(err).endswith("the options are demo, demo_conflict, demo_overfit, mine")


# ---- 2. a misspelled key ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "key", "meant"),
    [
        (["trainer.lrr=1e-3"], "trainer.lrr", "trainer.lr"),
        (["adapter.rnak=8"], "adapter.rnak", "adapter.rank"),  # untyped in the schema, but struct: Hydra's error
        (["data.max_seq_lenn=64"], "data.max_seq_lenn", "data.max_seq_len"),
        (["model.tiny.hidden_sizee=32"], "model.tiny.hidden_sizee", "model.tiny.hidden_size"),
        (["data.tasks.0.nme=x"], "data.tasks[0].nme", "data.tasks[0].name"),
        (["balancer=coba", "balancer.histroy=3"], "balancer.histroy", "balancer.history"),
        (["adaptor=lora"], "adaptor", "adapter"),
    ],
)
def test_misspelled_key_in_an_override_suggests_the_closest(overrides, key, meant):
    err = reported(overrides)
    assert err.key == key
    assert str(err) == f"{key}: unknown key; did you mean {meant}?"


@pytest.mark.parametrize(
    ("overrides", "key", "meant"),
    [
        (["+adapter.rnak=8"], "adapter.rnak", "adapter.rank"),  # the registry's LoraConfig rejects it
        (["adapter=smora", "+adapter.topk=2"], "adapter.topk", "adapter.top_k"),
        (["balancer=coba", "+balancer.warmup_step=3"], "balancer.warmup_step", "balancer.warmup_steps"),
        (["+trainer.lrr=1e-3"], "trainer.lrr", "trainer.lr"),  # Hydra lets `+` add it; the dataclass does not
    ],
)
def test_misspelled_key_at_conversion_suggests_the_closest(overrides, key, meant):
    assert str(reported(overrides)) == f"{key}: unknown key; did you mean {meant}?"


def test_unknown_key_without_a_close_match_lists_the_keys():
    err = reported(["+adapter.zzzz=1"])
    assert str(err) == "adapter.zzzz: unknown key; the keys here are alpha, dropout, name, rank, target_modules"
    assert str(unknown_key("zzzz", ["b", "a"])) == "zzzz: unknown key; the keys here are a, b"


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["trainer.lr=fast"], "trainer.lr", "Value 'fast' of type 'str' could not be converted to Float"),
        (["trainer"], "", "Error parsing override 'trainer'; missing EQUAL at '<EOF>'"),
        (["data.max_seq_len=${oc.env:MTFT_TEST_NO_SUCH_VARIABLE}"], "data.max_seq_len", "not found"),
    ],
)
def test_other_composition_errors_are_one_line_naming_the_key(overrides, key, words):
    err = reported(overrides)
    assert err.key == key and words in str(err)
    assert "\n" not in str(err) and "full_key" not in str(err) and "search path" not in str(err)


# ---- 3. top_k above the experts or ranks --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adapter", "size", "limit", "smallest"),
    [
        ("smora", ["adapter.rank=4"], 4, 1),
        ("molora", ["adapter.num_experts=4"], 4, 1),
        ("mor1e", ["adapter.num_down=2", "adapter.num_up=2"], 4, 0),  # 0 = dense routing over all 2·2 pairs
    ],
)
def test_top_k_above_the_experts_or_ranks(adapter, size, limit, smallest):
    base = [f"adapter={adapter}", *size]
    assert compose_config([*base, f"adapter.top_k={limit}"]).adapter.top_k == limit  # the bound itself is allowed
    assert compose_config([*base, f"adapter.top_k={smallest}"]).adapter.top_k == smallest
    for bad in (limit + 1, smallest - 1):
        err = reported([*base, f"adapter.top_k={bad}"])
        assert err.key == "adapter.top_k" and f"must be in [{smallest}, " in str(err) and f"got {bad}" in str(err)


# ---- 4. a learning rate <= 0 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", ["0", "-1e-3"])
def test_learning_rate_must_be_positive(lr):
    err = reported([f"trainer.lr={lr}"])
    assert str(err) == f"trainer.lr: learning rate must be > 0, got {float(lr)}"


# ---- 5. data.max_seq_len below the chat template's overhead --------------------------------------------------------


def test_chat_template_overhead_by_hand():
    """'<|im_start|>user\\n<|im_end|>\\n<|im_start|>assistant\\n<|im_end|>\\n' with the byte tokenizer: four special
    tokens, 'user\\n' 5, '\\n' 1, 'assistant\\n' 10, '\\n' 1."""
    assert chat_template_overhead(build_byte_tokenizer()) == 4 + 5 + 1 + 10 + 1


def test_max_seq_len_must_exceed_the_template_overhead():
    tokenizer, tasks = build_byte_tokenizer(), [TaskSpec(name="t", path="t.jsonl")]
    with pytest.raises(ConfigError) as info:
        check_max_seq_len(DataConfig(tasks=tasks, max_seq_len=21), tokenizer)
    assert info.value.key == "data.max_seq_len"
    assert "the chat template alone takes 21 tokens" in str(info.value) and "\n" not in str(info.value)
    check_max_seq_len(DataConfig(tasks=tasks, max_seq_len=22), tokenizer)  # one token of text fits
    text_only = [TaskSpec(name="t", path="t.jsonl", format="text")]
    check_max_seq_len(DataConfig(tasks=text_only, max_seq_len=8), tokenizer)  # no template: nothing to fit


def test_train_reports_max_seq_len_before_loading_the_model(dist_group, tmp_path, monkeypatch):
    """The check sits in train()'s setup between the tokenizer and the model."""

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("mtft.training.components.load_model", no_model)
    from mtft.training.loop import train

    cfg = compose_config(["data.max_seq_len=16", f"trainer.output_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"^data\.max_seq_len: 16 leaves no room.*takes 21 tokens"):
        train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---- 6. weights for unknown tasks ---------------------------------------------------------------------------------


def test_static_weights_for_an_unknown_task_list_the_tasks():
    """The only task-keyed weights; `data.tasks[i].weight` sits on its task and cannot name another."""
    err = reported(["balancer=static", "balancer.weights={add: 2.0, nosuch: 1.0}"])
    assert str(err) == f"balancer.weights.nosuch: no task is named 'nosuch'; the tasks are {DEMO_TASKS}"


# ---- 7. val_fraction outside (0, 1) -------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_val_fraction_outside_zero_one(fraction):
    err = reported([f"data.val_fraction={fraction}"])
    assert str(err) == f"data.val_fraction: must be in (0, 1), got {float(fraction)}"
    task = f"data.tasks=[{{name: a, path: a.jsonl}}, {{name: b, path: b.jsonl, val_fraction: {fraction}}}]"
    err = reported([task])
    assert str(err) == f"data.tasks[1].val_fraction: must be in (0, 1), got {float(fraction)}"


def test_a_task_fields_error_points_at_the_data_tasks_override():
    """mtft-train appends where a key was set; `data.tasks=[...]` on the command line sets data.tasks[1].*."""
    from mtft.cli.train import _covers

    assert _covers("data.tasks", "data.tasks[1].val_fraction") and _covers("data", "data.tasks[1].val_fraction")
    assert not _covers("data.task", "data.tasks[1].val_fraction")


# ---- 8. CoBa (any validation-driven balancer) always has validation data ------------------------------------------


def _records(n: int) -> str:
    turns = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(n)]
    return "".join(json.dumps({"messages": t}) + "\n" for t in turns)


@pytest.mark.parametrize(("val_fraction", "max_val_samples"), [(0.001, 1), (0.999, 128)])
def test_every_task_gets_validation_samples_from_the_smallest_data(tmp_path, val_fraction, max_val_samples):
    """CoBa cannot be left without validation losses: the smallest data a task may have (2 usable samples, or 1
    plus a val_path) with the smallest val_fraction or max_val_samples still gives every task >= 1 validation and
    >= 1 training sample. Less data is a DataError (tests/data/test_tasks.py, test_formats.py)."""
    (tmp_path / "two.jsonl").write_text(_records(2))
    (tmp_path / "one.jsonl").write_text(_records(1))
    specs = [
        TaskSpec(name="split", path=str(tmp_path / "two.jsonl")),
        TaskSpec(name="own_val", path=str(tmp_path / "one.jsonl"), val_path=str(tmp_path / "one.jsonl")),
    ]
    data = DataConfig(tasks=specs, val_fraction=val_fraction, max_val_samples=max_val_samples)
    tasks = load_tasks(data, build_byte_tokenizer(), seed=0)
    assert [(len(t.train), len(t.val)) for t in tasks] == [(1, 1), (1, 1)]
    with pytest.raises(DataError, match="has 1 usable samples; it needs >= 2"):
        load_tasks(DataConfig(tasks=[TaskSpec(name="x", path=str(tmp_path / "one.jsonl"))]), build_byte_tokenizer(), 0)


# ---- 9. a ZeRO stage that does not exist --------------------------------------------------------------------------


@pytest.mark.parametrize("stage", [5, -1])
def test_zero_stage_that_does_not_exist(stage):
    err = reported([f"deepspeed.stage={stage}"])
    assert str(err) == f"deepspeed.stage: ZeRO stage must be 0, 1, 2 or 3, got {stage}"
    # deepspeed=zero9, the group option: test_unknown_group_option_lists_the_options


# ---- 10. a model path that does not exist -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/no/such/dir", "./no-such-model", "~/no-such-mtft-model", "models/org/name"])
def test_missing_model_directory_is_named_before_anything_loads(path, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("transformers was asked to load it")

    monkeypatch.setattr("mtft.models.loading.AutoTokenizer.from_pretrained", no_load)
    with pytest.raises(ConfigError) as info:
        load_tokenizer(ModelConfig(name_or_path=path))
    assert str(info.value) == f"model.name_or_path: {path}: no such directory, and not a hub id"


def test_hub_id_that_cannot_be_fetched_offline_is_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as HF_HUB_OFFLINE=1 at start-up
    with pytest.raises(ConfigError) as info:
        load_tokenizer(ModelConfig(name_or_path="no-such-org/no-such-model"))
    message = str(info.value)
    assert message.startswith("model.name_or_path: no-such-org/no-such-model: not a local directory, and the hub")
    assert "couldn't find them in the cached files" in message and "\n" not in message


def test_directory_without_a_model_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.name_or_path: .*: no config.json in it; not a model directory$"):
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))


def test_gguf_file_not_in_the_directory_names_the_ones_there(tmp_path):
    (tmp_path / "model.Q4_1.gguf").touch()
    with pytest.raises(ConfigError) as info:
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path), gguf_file="other.gguf"))
    assert (
        str(info.value) == f"model.gguf_file: other.gguf: not a file in {tmp_path} (GGUF files there: model.Q4_1.gguf)"
    )
    with pytest.raises(ConfigError, match=r"no config.json in it; not a model directory; set model.gguf_file=NAME"):
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path)))


def test_gguf_without_the_gguf_package_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    (tmp_path / "model.gguf").touch()
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError) as info:
        load_tokenizer(ModelConfig(name_or_path=str(tmp_path), gguf_file="model.gguf"))
    assert str(info.value) == "model.gguf_file: reading a GGUF file needs the gguf package: pip install 'mtft[gguf]'"


# ---- 11. a tiny-model field out of range --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.tiny.initializer_range=-1", "model.tiny.initializer_range: must be in (0, 1], got -1.0"),
        ("model.tiny.initializer_range=0", "model.tiny.initializer_range: must be in (0, 1], got 0.0"),
        ("model.tiny.initializer_range=5", "model.tiny.initializer_range: must be in (0, 1], got 5.0"),
        ("model.tiny.max_position_embeddings=0", "model.tiny.max_position_embeddings: must be > 0, got 0"),
        ("model.tiny.init_seed=-1", "model.tiny.init_seed: must be >= 0, got -1"),
        ("model.tiny.hidden_size=0", "model.tiny.hidden_size: must be > 0, got 0"),
        ("model.tiny.num_heads=3", "model.tiny.num_heads: must divide hidden_size"),
        ("model.tiny.hidden_size=12", "model.tiny.num_heads: hidden_size / num_heads must be even (rotary), got 3"),
    ],
)
def test_tiny_model_field_out_of_range(override, message):
    assert str(reported([override])) == message


def test_tiny_model_bounds_are_inclusive_where_valid():
    tiny = compose_config(["model.tiny.initializer_range=1", "model.tiny.init_seed=0"]).model.tiny
    assert tiny.initializer_range == 1.0 and tiny.init_seed == 0
