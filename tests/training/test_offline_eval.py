"""mtft-eval and mtft-generate: a trained checkpoint's per-task losses equal the run's own final validation, its
generations are the model's own (batched, left-padded, as one at a time), for LoRA and for MoR1E with its prior."""

from __future__ import annotations

import json

import pytest
import torch

from mtft.cli.eval import main as eval_main
from mtft.cli.generate import main as generate_main
from mtft.errors import ConfigError
from mtft.eval.generation import Decoding, generate_batch
from mtft.models import TinyModelConfig, build_byte_tokenizer, build_tiny_model
from mtft.training.export import export
from mtft.training.loop import train
from mtft.training.offline_eval import EvalSettings, evaluate
from tests.helpers import compose_config

SETTINGS = EvalSettings(batch_size=4, max_new_tokens=8)
SHORT = ["trainer.max_steps=3", "trainer.eval_steps=3", "trainer.eval_generations=0", "data.max_val_samples=6"]


@pytest.fixture(scope="module", params=[["adapter=lora"], ["adapter=mor1e", "adapter.intuition_clusters=2"]])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    train(compose_config([*SHORT, *request.param, f"trainer.output_dir={out}"]))
    return out


def test_the_losses_are_the_runs_final_validation_and_every_prompt_is_answered(run, tmp_path):
    report = evaluate(run / "checkpoint-3", tmp_path / "eval", SETTINGS)
    summary = json.loads((run / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "eval" / "eval.json").read_text()) == report
    for name, result in report["tasks"].items():
        assert result["val_loss"] == pytest.approx(summary["tasks"][name]["final_val_loss"], rel=1e-6)
        assert result["perplexity"] == pytest.approx(torch.tensor(result["val_loss"]).exp().item(), rel=1e-6)
        task_rows = [r for r in rows if r["task"] == name]
        assert result["generated"] == len(task_rows) == result["val_samples"] == 6
        for metric in ("exact_match", "token_f1"):
            assert 0.0 <= result[metric] <= 1.0
            assert result[metric] == pytest.approx(sum(r[metric] for r in task_rows) / len(task_rows))
        assert all(r["prompt"] and r["reference"] for r in task_rows)
    again = evaluate(run / "checkpoint-3", tmp_path / "again", SETTINGS)  # greedy: the same outputs
    assert (tmp_path / "again" / "predictions.jsonl").read_text() == (
        tmp_path / "eval" / "predictions.jsonl"
    ).read_text()
    assert again["tasks"] == report["tasks"]


def test_each_samples_loss_is_kept_and_they_make_the_runs_final_validation_loss(run, tmp_path):
    """sample_losses.jsonl: one row per validation sample, whose token sums over token counts are the task's loss
    (the run's own final validation, computed in training's batches); a sample's loss is its own, the same in a
    batch of one."""
    report = evaluate(run / "checkpoint-3", tmp_path / "eval", SETTINGS)
    evaluate(run / "checkpoint-3", tmp_path / "alone", EvalSettings(batch_size=1, max_new_tokens=1))
    summary = json.loads((run / "summary.json").read_text())
    rows, single = (
        [json.loads(line) for line in (tmp_path / d / "sample_losses.jsonl").read_text().splitlines()]
        for d in ("eval", "alone")
    )
    for name, result in report["tasks"].items():
        mine = [r for r in rows if r["task"] == name]
        assert [r["index"] for r in mine] == list(range(result["val_samples"]))
        assert all(r["tokens"] > 0 and r["loss_sum"] > 0 for r in mine)
        pooled = sum(r["loss_sum"] for r in mine) / sum(r["tokens"] for r in mine)
        assert pooled == pytest.approx(summary["tasks"][name]["final_val_loss"], rel=1e-6)
        assert len({round(r["loss_sum"] / r["tokens"], 6) for r in mine}) > 1  # per sample, not the task's mean
    assert [(r["task"], r["index"], r["tokens"]) for r in single] == [
        (r["task"], r["index"], r["tokens"]) for r in rows
    ]
    assert [r["loss_sum"] for r in single] == pytest.approx([r["loss_sum"] for r in rows], rel=1e-5)


def test_an_exported_adapter_evaluates_with_its_runs_config(run, tmp_path):
    export(run / "checkpoint-3", tmp_path / "exported", merge=False)
    report = evaluate(tmp_path / "exported", tmp_path / "eval", SETTINGS, config=run / "config.yaml")
    direct = evaluate(run / "checkpoint-3", tmp_path / "direct", SETTINGS)
    assert report["tasks"] == direct["tasks"]


def test_left_padded_batches_generate_what_each_prompt_generates_alone():
    tokenizer = build_byte_tokenizer()
    torch.manual_seed(0)
    model = build_tiny_model(TinyModelConfig(), tokenizer).eval()
    prompts = [tokenizer.encode(text) for text in ("12+3=", "reverse: abcdef ->", "x")]
    stop = [tokenizer.eos_token_id]
    together = generate_batch(model, tokenizer, prompts, stop, Decoding(6))
    alone = [generate_batch(model, tokenizer, [prompt], stop, Decoding(6))[0] for prompt in prompts]
    assert together == alone and all(len(out) <= 6 for out in together)


def test_the_command_line_names_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_main([f"checkpoint={tmp_path}", f"out={tmp_path / 'out'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "neither an mtft checkpoint nor an exported adapter" in err
    with pytest.raises(SystemExit):
        eval_main([f"checkpoint={tmp_path}", f"out={tmp_path}", "beam_width=4"])
    assert "unknown: ['beam_width']" in capsys.readouterr().err


def test_training_scores_its_sample_generations_as_mtft_eval_does(tmp_path):
    out = tmp_path / "run"
    train(
        compose_config(
            ["trainer.max_steps=2", "trainer.eval_steps=2", "trainer.eval_generations=3", f"trainer.output_dir={out}"]
        )
    )
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    last = records[-1]
    for task in ("add", "reverse", "sort", "sentiment"):
        rows = [g for g in generations if g["task"] == task and g["step"] == 2]
        assert len(rows) == 3
        for metric in ("exact_match", "token_f1"):  # the default metrics, the mean of the rows' scores
            assert 0.0 <= last[f"task/{task}/{metric}"] <= 1.0


def test_generate_answers_a_prompt_as_a_string_or_a_conversation_from_the_command_line(run, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    question = "What is 12 + 30?"
    prompts.write_text(
        json.dumps({"prompt": question}) + "\n" + json.dumps({"messages": [{"role": "user", "content": question}]})
    )
    out = tmp_path / "answers.jsonl"
    generate_main([f"checkpoint={run / 'checkpoint-3'}", f"prompts={prompts}", f"out={out}", "max_new_tokens=6"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["output"] == rows[1]["output"]  # the same question, the same greedy answer
    generate_main([f"checkpoint={run / 'checkpoint-3'}", f"prompt={question}", "max_new_tokens=6"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == rows[0]["output"].strip()

    prompts.write_text(json.dumps({"prompt": question}) + "\n" + json.dumps({"text": "no prompt"}) + "\n")
    with pytest.raises(SystemExit):
        generate_main([f"checkpoint={run / 'checkpoint-3'}", f"prompts={prompts}"])
    assert f"{prompts}:2: field 'prompt' expected" in capsys.readouterr().err


def test_lm_eval_runs_a_local_task_on_the_trained_model(run, tmp_path):
    """The `eval` extra: a local task YAML over a local data file, through lm-eval's Python API."""
    pytest.importorskip("lm_eval")
    data = tmp_path / "parity.jsonl"
    data.write_text(
        "".join(json.dumps({"q": f"Is {i} even?", "choices": ["yes", "no"], "label": i % 2}) + "\n" for i in range(6))
    )
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "parity.yaml").write_text(
        "task: mtft_parity\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{q}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n"
    )
    settings = EvalSettings(
        batch_size=4,
        max_new_tokens=2,
        max_samples=1,
        harness_tasks="mtft_parity",
        harness_include=str(tmp_path / "tasks"),
    )
    adapter = json.loads((run / "checkpoint-3" / "adapter" / "mtft_adapter.json").read_text())
    if adapter.get("intuition_clusters"):  # routing needs each prompt's prior apart from its answer
        with pytest.raises(ConfigError, match="routes on the prompt apart from the answer"):
            evaluate(run / "checkpoint-3", tmp_path / "eval", settings)
        return
    report = evaluate(run / "checkpoint-3", tmp_path / "eval", settings)
    result = report["harness"]["mtft_parity"]
    assert result["sample_len"] == 6 and result["acc,none"] in {i / 6 for i in range(7)}
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["harness"] == report["harness"]


def test_another_data_config_chooses_the_tasks_and_their_metrics(run, tmp_path):
    from mtft.data.synthetic import DEMO_DATA_DIR

    data = tmp_path / "data.yaml"
    data.write_text(
        "tasks:\n"
        f"  - {{name: add, path: {DEMO_DATA_DIR / 'add.jsonl'}, metrics: [accuracy, chrf],"
        " answer_pattern: '(\\d+)'}\n"
        "max_seq_len: 128\nmax_val_samples: 6\n"
    )
    report = evaluate(run / "checkpoint-3", tmp_path / "eval", SETTINGS, data=data)
    assert list(report["tasks"]) == ["add"]
    assert {"accuracy", "chrf"} <= report["tasks"]["add"].keys() and "exact_match" not in report["tasks"]["add"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"tasks:\n  - {{name: add, path: {DEMO_DATA_DIR / 'add.jsonl'}, metrics: [bleu]}}\n")
    with pytest.raises(ConfigError, match="metrics.*bleu"):
        evaluate(run / "checkpoint-3", tmp_path / "eval2", SETTINGS, data=bad)
