"""`mtft-train` end to end, as a user runs it: outputs, the metrics contract, errors, sweeps, a local model."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from mtft.training.loop import train
from tests.helpers import compose_config, run_cli, small_data_overrides

pytestmark = pytest.mark.integration

TASKS = ("add", "reverse", "sort", "sentiment")


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_thirty_steps_write_the_run_contract(tmp_path):
    out = tmp_path / "run"
    proc = run_cli(["trainer.max_steps=30", f"trainer.output_dir={out}", "trainer.logging_steps=5"], script=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "data_report.json"):
        assert (out / name).is_file(), name
    checkpoint = out / "checkpoint-30"
    assert (checkpoint / "COMPLETE").is_file() and (checkpoint / "adapter" / "adapter_model.safetensors").is_file()
    assert (checkpoint / "mp_rank_00_model_states.pt").is_file()  # the DeepSpeed engine's own checkpoint

    records = _records(out)
    assert [r["step"] for r in records] == [5, 10, 15, 20, 25, 30]
    for record in records:
        assert {"step", "loss", "lr", "grad_norm", "tokens_per_second", "samples_per_second"} <= record.keys()
        assert {"throughput/tflops_per_device", "memory/peak_rss_gb"} <= record.keys()
        assert all(f"task/{t}/loss" in record and f"task/{t}/weight" in record for t in TASKS)
    assert all(f"task/{t}/val_loss" in records[-1] for t in TASKS)
    for task in TASKS:  # per-task training loss falls
        assert records[-1][f"task/{task}/loss"] < records[0][f"task/{task}/loss"], task

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 30 and summary["tokens"] > 0 and summary["wall_seconds"] > 0
    for task in TASKS:
        entry = summary["tasks"][task]
        assert {
            "train_samples",
            "val_samples",
            "dropped",
            "truncated",
            "final_val_loss",
            "best_step",
            "best_val_loss",
            "rise",
            "final_weight",
        } <= entry.keys()
        assert entry["final_val_loss"] < entry["initial_val_loss"]
    report = json.loads((out / "data_report.json").read_text())["tasks"]
    for task in TASKS:
        r = report[task]
        assert r["samples"] + sum(r["dropped"].values()) == r["lines_read"]
        assert r["train_samples"] + r["val_samples"] == r["samples"]
    config_text = (out / "config.yaml").read_text()
    assert "max_steps: 30" in config_text and "mtft/data/demo/add.jsonl" in config_text
    assert "sentiment" in proc.stdout and "lower" in proc.stdout  # the closing per-task table


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("adapter=nosuch", "adapter"),
        ("trainer.lr=-0.1", "trainer.lr"),
        ("balancer=static 'balancer.weights={nosuch: 0.0}'", "balancer.weights.nosuch"),
        ("trainer.lr=fast", "trainer.lr"),
    ],
)
def test_bad_overrides_exit_nonzero_naming_the_key(override, named, tmp_path):
    proc = run_cli([*shlex.split(override), f"trainer.output_dir={tmp_path}/never"], timeout=120)
    assert proc.returncode != 0
    assert named in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "never" / "metrics.jsonl").exists()


def test_bad_data_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    bad.write_text(good + "\n" + '{"messages": [{"role": "robot", "content": "x"}]}\n')
    proc = run_cli([f"data.tasks=[{{name: t, path: '{bad}'}}]", f"trainer.output_dir={tmp_path}/out"], timeout=120)
    assert proc.returncode == 2
    assert f"{bad}:2" in proc.stderr and "messages[0].role" in proc.stderr and "robot" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_multirun_sweep_gives_each_job_its_own_dir(tmp_path, small_tasks):
    sweep = ["-m", "trainer.lr=1e-3,2e-3", "trainer.max_steps=2", f"trainer.output_dir={tmp_path}/sweep"]
    proc = run_cli(sweep + small_data_overrides(small_tasks))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "summary.json").is_file()
        logger = yaml.safe_load((tmp_path / "sweep" / job / "config.yaml").read_text())["logger"]
        assert logger["group"] == "sweep" and logger["run_name"] == f"sweep-{job}"  # one W&B group per sweep
    lrs = {
        float(json.loads((tmp_path / "sweep" / j / "metrics.jsonl").read_text().splitlines()[0])["lr"]) for j in "01"
    }
    assert len(lrs) == 2


def test_trains_from_a_local_model_directory(dist_group, small_tasks, tmp_path):
    """The real loading path: AutoModel/AutoTokenizer from a directory, as for any HF checkpoint."""
    model_dir = tmp_path / "my-model"
    tokenizer = build_byte_tokenizer()
    build_tiny_model(TinyModelConfig(hidden_size=32, num_heads=2, num_kv_heads=1), tokenizer).save_pretrained(
        model_dir
    )
    tokenizer.save_pretrained(model_dir)
    cfg = compose_config(
        [
            "model=hf",
            f"model.name_or_path={model_dir}",
            *small_data_overrides(small_tasks),
            "trainer.max_steps=4",
            f"trainer.output_dir={tmp_path / 'run'}",
        ]
    )
    assert cfg.model.trust_remote_code is False
    summary = train(cfg)
    assert summary["steps"] == 4
    assert (tmp_path / "run" / "checkpoint-4" / "adapter" / "adapter_model.safetensors").is_file()
    adapter_cfg = json.loads((tmp_path / "run" / "checkpoint-4" / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(model_dir)
    shutil.rmtree(model_dir)
