"""`mtft-train logger=wandb`, offline, read back with wandb's own reader (`wandb leet inspect --json`, which
parses the run's .wandb transaction log): the per-task losses and weights, CoBa's internals, the router
statistics, the data-report and generations tables and the config are there, and secrets planted in the
environment are nowhere in the run's files."""

from __future__ import annotations

import pytest

from tests.helpers import run_cli, small_data_overrides, wandb_records

pytestmark = pytest.mark.integration

SECRETS = {"HF_TOKEN": "hf_plantedSecret4242", "MY_SERVICE_API_KEY": "sk-planted-0123456789"}


def test_offline_run_read_back_through_wandbs_reader(small_tasks, tmp_path):
    out = tmp_path / "run"
    overrides = [
        *small_data_overrides(small_tasks, generations=2),
        "logger=wandb",
        "logger.tags=[${oc.env:HF_TOKEN}]",  # a user pulling a secret into the config by mistake
        "adapter=smora",
        "balancer=coba",
        "balancer.warmup_steps=2",
        "balancer.update_interval=1",
        "trainer.max_steps=6",
        "trainer.eval_steps=3",
        "trainer.logging_steps=1",
        f"trainer.output_dir={out}",
    ]
    proc = run_cli(overrides, env=SECRETS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    records = wandb_records(run_dir)

    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    steps = [h["_step"] for h in history if "loss" in h]
    assert steps == list(range(1, 7))
    last = [h for h in history if h.get("_step") == 6 and "loss" in h][-1]
    for key in ("task/add/loss", "task/sentiment/loss", "task/add/weight", "task/sentiment/val_loss"):
        assert key in last, key
    for key in ("balancer/rcs/add", "balancer/acs/sentiment", "balancer/df"):
        assert key in last, key
    assert "router/mean_entropy" in last and "router/dead_experts" in last
    assert "throughput/tflops_per_device" in last and "samples_per_second" in last
    # the reader flattens media and histograms into "<key>._type" and their other fields
    types = {k[: -len("._type")]: v for h in history for k, v in h.items() if k.endswith("._type")}
    loads = [k for k in last if k.endswith("/load._type")]
    assert loads and all(last[k] == "histogram" for k in loads)
    assert types["router/load_heatmap"] == "image-file"  # at evaluations
    assert types["data_report"] == types["generations"] == "table-file"

    (config,) = [r["run"]["config"]["update"] for r in records if r["type"] == "run"]
    assert config["trainer"]["max_steps"] == 6 and config["adapter"]["name"] == "smora"
    assert config["logger"]["tags"] == ["<redacted:HF_TOKEN>"]

    planted = [secret.encode() for secret in SECRETS.values()]
    leaks = [str(path) for path in out.rglob("*") if path.is_file() and any(s in path.read_bytes() for s in planted)]
    assert not leaks
    assert "<redacted:HF_TOKEN>" in (out / "config.yaml").read_text()
