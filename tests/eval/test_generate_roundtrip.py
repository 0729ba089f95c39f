"""Train → save → mtft-export → a new process → mtft-generate answers each validation prompt exactly as the model
did during training (its sample generations), for every adapter, in batches or one prompt at a time."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from mtft.adapters import ADAPTERS, adapter_variants
from mtft.training.export import export
from mtft.training.loop import train
from tests.helpers import compose_config

pytestmark = pytest.mark.integration

STEPS, PROMPTS, TOKENS = 4, 5, 8
# every registered adapter (not full fine-tuning: a whole model, test_export's) and its declared variants (MoR1E's
# prior: from the prompt and the saved centroids)
RUNS = {
    run: [f"adapter={name}", *(f"adapter.{key}={value}" for key, value in settings.items())]
    for run, (name, settings) in adapter_variants(runs=True).items()
    if not ADAPTERS[name].config.is_full_model
}
# mtft-generate's CLI, twice per exported adapter (all prompts in one batch, then one at a time), in one new process
GENERATE = """
import sys
from mtft.cli.generate import main
for directory, config, prompts, out in zip(*[iter(sys.argv[1:])] * 4):
    for batch in (8, 1):
        main([f"checkpoint={directory}", f"config={config}", f"prompts={prompts}", f"out={out}.{batch}",
              f"max_new_tokens={TOKENS}", f"batch_size={batch}"])
""".replace("TOKENS", str(TOKENS))


def test_exported_adapters_generate_in_a_new_process_what_the_trained_model_generated(tmp_path):
    expected, arguments = {}, []
    for name, overrides in RUNS.items():
        run = tmp_path / name
        settings = [f"trainer.max_steps={STEPS}", f"trainer.eval_steps={STEPS}", f"trainer.eval_generations={PROMPTS}"]
        train(compose_config([*overrides, *settings, f"trainer.max_new_tokens={TOKENS}", f"trainer.output_dir={run}"]))
        rows = [json.loads(line) for line in (run / "generations.jsonl").read_text().splitlines()]
        rows = [row for row in rows if row["step"] == STEPS]  # the final model's, the one the checkpoint saved
        assert len(rows) == 4 * PROMPTS  # every demo task
        export(run / f"checkpoint-{STEPS}", tmp_path / f"{name}-exported", merge=False)
        prompts = tmp_path / f"{name}-prompts.jsonl"
        users = [re.fullmatch(r"user\n(.*)\nassistant\n", row["prompt"], re.DOTALL).group(1) for row in rows]
        prompts.write_text("".join(json.dumps({"prompt": user}) + "\n" for user in users))
        expected[name] = [row["output"] for row in rows]
        assert len(set(expected[name])) > PROMPTS  # varied outputs, not one string everywhere: a sharp comparison
        arguments += [tmp_path / f"{name}-exported", run / "config.yaml", prompts, tmp_path / f"{name}-answers"]

    subprocess.run([sys.executable, "-c", GENERATE, *map(str, arguments)], check=True, capture_output=True)
    for name, outputs in expected.items():
        for batch in (8, 1):
            answers = (tmp_path / f"{name}-answers.{batch}").read_text().splitlines()
            assert [json.loads(line)["output"] for line in answers] == outputs, (name, batch)
