"""Bad records through the whole `mtft-train` path under the lenient policy: `data.bad_records=drop` trains on the
rest and counts every drop by reason. (The strict default, one message naming file, line and field, is
tests/integration/test_train_cli.py::test_bad_data_names_file_and_line.)"""

from __future__ import annotations

import json

import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.integration


def _turns(question: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})


@pytest.fixture
def messy(tmp_path):
    """20 good records with four bad ones among them, each bad in its own way (line numbers are 1-based)."""
    lines = [_turns(f"what is {i}+1?", str(i + 1)) for i in range(20)]
    lines.insert(2, '{"messages": [{"role": "user", "content": "hi"}')  # line 3: malformed JSON
    lines.insert(5, json.dumps({"messages": [{"role": "robot", "content": "x"}]}))  # line 6: unknown role
    lines.insert(9, json.dumps({"messages": [{"role": "user", "content": "only a question"}]}))  # line 10
    lines.insert(12, json.dumps([1, 2]))  # line 13: not an object
    path = tmp_path / "messy.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_lenient_policy_trains_and_counts_every_drop(messy, tmp_path):
    out = tmp_path / "lenient"
    args = [f"data.tasks=[{{name: t, path: '{messy}'}}]", "data.bad_records=drop", "trainer.max_steps=2"]
    proc = run_cli([*args, "trainer.eval_generations=0", f"trainer.output_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "data_report.json").read_text())["tasks"]["t"]
    assert report["dropped"] == {"malformed_json": 1, "unknown_role": 1, "no_assistant_turn": 1, "not_an_object": 1}
    assert report["lines_read"] == 24 and report["samples"] == 20
    assert report["train_samples"] + report["val_samples"] == 20
    assert "malformed_json: 1" in proc.stdout  # the printed data report shows the reasons too
