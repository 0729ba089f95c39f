"""scripts/experiments/mixing.py: its paired bootstrap against hand computations, its adapter overrides from the
registry, and --quick end to end (every arm of both experiments trains 2 steps on SmolLM2 on an unequal tiny suite,
is scored per item by mtft-eval, compared and rendered; a second call only re-renders). The suite comes from the
tiny dictd and WordNet files that test_real_suite writes, so CI needs no Debian packages."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mtft.adapters import baseline_adapter, compared_adapters, run_settings
from mtft.adapters.lora import LoraConfig
from mtft.adapters.mor1e import MoR1EConfig
from tests.scripts.test_real_experiments import _script
from tests.scripts.test_real_suite import write_sources

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "experiments"
MIXING = _script("mixing")
STATS = sys.modules["mixing_stats"]  # as mixing.py imports it
REPORT = sys.modules["mixing_report"]
TASKS = ["translate_fr", "translate_es", "translate_de", "define", "hypernym"]


def arm(scores: dict[str, list[list[float]]], losses: dict[str, list[list[float]]], tokens: int = 2):
    """An arm's items: per task, (seeds, items) headline scores and per-item mean losses over `tokens` tokens."""
    return STATS.ArmItems(
        scores={t: np.array(s, float) for t, s in scores.items()},
        loss_sums={t: np.array(v, float) * tokens for t, v in losses.items()},
        tokens={t: np.full(np.shape(v), float(tokens)) for t, v in losses.items()},
    )


def test_observed_metrics_are_the_designs_hand_computed():
    items = arm(
        scores={"a": [[1, 0, 1], [1, 1, 1]], "b": [[0, 0, 1], [0, 1, 0]]},
        losses={"a": [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]], "b": [[4.0, 4.0, 4.0], [1.0, 1.0, 1.0]]},
    )
    got = STATS.metrics(items, STATS.observed(2, {"a": 3, "b": 3}))
    # task means: a 5/6, b 2/6; primary their mean, worst the lower; loss: a (2 + 2) / 2, b (4 + 1) / 2
    assert got["primary"][0] == pytest.approx((5 / 6 + 2 / 6) / 2)
    assert got["worst"][0] == pytest.approx(2 / 6)
    assert got["val_loss"][0] == pytest.approx((2.0 + 2.5) / 2)


def test_a_tasks_resampled_loss_is_its_drawn_tokens_mean_not_the_mean_of_item_means():
    items = STATS.ArmItems(
        scores={"a": np.zeros((1, 2))}, loss_sums={"a": np.array([[1.0, 9.0]])}, tokens={"a": np.array([[1.0, 3.0]])}
    )
    draws = STATS.Draws(np.ones((1, 1)), {"a": np.array([[2.0, 0.0]])})  # item 0 twice
    assert STATS.metrics(items, draws)["val_loss"][0] == pytest.approx(1.0)
    assert STATS.metrics(items, STATS.observed(1, {"a": 2}))["val_loss"][0] == pytest.approx(10 / 4)


def test_a_shift_on_every_item_and_seed_is_better_with_a_zero_width_interval_and_equal_arms_are_within_noise():
    rng = np.random.default_rng(0)
    base = {t: rng.random((3, 20)).round() for t in ("a", "b")}
    losses = {t: 1 + rng.random((3, 20)) for t in ("a", "b")}
    reference = arm({t: s * 0.5 for t, s in base.items()}, losses)
    shifted = arm({t: s * 0.5 + 0.25 for t, s in base.items()}, {t: v - 0.5 for t, v in losses.items()})
    draws = STATS.bootstrap_draws(3, {"a": 20, "b": 20}, 500, seed=1)
    point = STATS.observed(3, {"a": 20, "b": 20})
    better = STATS.compare(shifted, reference, draws, point)
    assert better["primary"].observed == pytest.approx(0.25)
    assert (better["primary"].low, better["primary"].high) == pytest.approx((0.25, 0.25))  # one draw for both arms
    assert better["val_loss"].observed == pytest.approx(-0.5)
    assert {d.verdict for d in better.values()} == {"better"}  # lower loss is better
    assert {d.verdict for d in STATS.compare(reference, shifted, draws, point).values()} == {"worse"}
    same = STATS.compare(reference, reference, draws, point)
    assert {d.verdict for d in same.values()} == {"within noise"}


def test_seeds_are_resampled_so_a_seed_split_difference_is_within_noise():
    """Arm − reference is +1 on seed 1's items and −1 on seed 2's: resampling items alone would call it zero with a
    zero-width interval; resampling seeds too gives a wide one."""
    reference = arm({"a": np.zeros((2, 10))}, {"a": np.ones((2, 10))})
    split = arm({"a": np.array([[1.0] * 10, [-1.0] * 10])}, {"a": np.ones((2, 10))})
    draws = STATS.bootstrap_draws(2, {"a": 10}, 2000, seed=3)
    primary = STATS.compare(split, reference, draws, STATS.observed(2, {"a": 10}))["primary"]
    assert primary.observed == pytest.approx(0.0) and primary.verdict == "within noise"
    assert primary.low == pytest.approx(-1.0) and primary.high == pytest.approx(1.0)


def test_the_draws_are_fixed_by_their_seed():
    first = STATS.bootstrap_draws(3, {"a": 5}, 100, seed=7)
    again = STATS.bootstrap_draws(3, {"a": 5}, 100, seed=7)
    assert np.array_equal(first.seeds, again.seeds) and np.array_equal(first.items["a"], again.items["a"])
    assert (first.seeds.sum(1) == 3).all() and (first.items["a"].sum(1) == 5).all()  # with replacement, same size


def test_the_best_static_mixing_is_the_highest_mean_primary_and_the_first_on_a_tie():
    point = STATS.observed(1, {"a": 2})
    natural, uniform, temperature = STATS.STATIC
    items = {
        natural: arm({"a": [[0.5, 0.5]]}, {"a": [[1.0, 1.0]]}),
        uniform: arm({"a": [[1.0, 0.0]]}, {"a": [[1.0, 1.0]]}),
        temperature: arm({"a": [[0.0, 0.5]]}, {"a": [[1.0, 1.0]]}),
        "a-dynamic-arm": arm({"a": [[1.0, 1.0]]}, {"a": [[1.0, 1.0]]}),  # not a static mixing
    }
    assert STATS.best_static(items, point) == natural
    items[temperature] = arm({"a": [[1.0, 0.5]]}, {"a": [[1.0, 1.0]]})
    assert STATS.best_static(items, point) == temperature


def test_adapter_overrides_name_only_the_fields_off_the_default_and_mor1e_takes_its_prior():
    assert MIXING.adapter_overrides(LoraConfig(rank=16, alpha=32.0)) == ("adapter=lora",)
    assert MIXING.adapter_overrides(LoraConfig(rank=4, alpha=8.0, target_modules=["q_proj", "v_proj"])) == (
        "adapter=lora",
        "adapter.alpha=8.0",
        "adapter.target_modules=[q_proj,v_proj]",
        "adapter.rank=4",
    )
    mor1e = MoR1EConfig(num_down=5, num_up=5, top_k=5, **run_settings(MoR1EConfig))
    assert mor1e.intuition_clusters == 4
    assert "adapter.intuition_clusters=4" in MIXING.adapter_overrides(mor1e)
    assert MIXING.variant_name(mor1e) == "mor1e+intuition_clusters_4"


def test_a_cached_run_whose_config_is_no_longer_its_arms_is_refused(tmp_path):
    config = {"adapter": {"name": "smora", "rank": 11, "top_k": 1}, "data": {"mixing": "natural", "temperature": 2.0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    MIXING.check_config(tmp_path, ["adapter=smora", "adapter.rank=11", "data.mixing=natural", "data.temperature=2"])
    with pytest.raises(SystemExit, match="adapter.top_k=1, the arm now says 2"):
        MIXING.check_config(tmp_path, ["adapter=smora", "adapter.top_k=2"])
    with pytest.raises(SystemExit, match="balancer=None, the arm now says odm"):
        MIXING.check_config(tmp_path, ["balancer=odm"])


def test_a_render_keeps_the_outcome_people_wrote_and_nothing_else_of_the_old_page(tmp_path):
    page = tmp_path / "mixing.md"
    assert REPORT.kept_outcome(page) == []
    page.write_text("# Title\n\nold design\n\n## Experiment 1\n\n| old | table |\n")
    assert REPORT.kept_outcome(page) == []
    outcome = [REPORT.OUTCOME, "", "Temperature mixing won.", "", "### Why", "FAMO starved four tasks.", ""]
    page.write_text("\n".join(["# Title", "", *outcome, "## Experiment 1", "", "| old | table |"]) + "\n")
    assert REPORT.kept_outcome(page) == outcome
    page.write_text("\n".join(["# Title", "", *outcome[:-1]]))  # the last section of the page
    assert REPORT.kept_outcome(page) == outcome[:-1]


# ---- --quick end to end ------------------------------------------------------------------------------------------


def _mixing(out: Path) -> subprocess.CompletedProcess:
    dictd, wordnet = out / "sources" / "dictd", out / "sources" / "wordnet"
    if not dictd.is_dir():
        write_sources(out / "sources")
    command = [sys.executable, str(SCRIPTS / "mixing.py"), "--quick", f"--out={out}"]
    command += [f"--dictd-dir={dictd}", f"--wordnet-dir={wordnet}"]
    env = {**os.environ, "MTFT_GGUF_CACHE": str(out / "gguf-cache")}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


@pytest.mark.integration
@pytest.mark.real_model
@pytest.mark.experiments
def test_quick_runs_every_arm_compares_and_renders_and_a_second_call_only_renders(tmp_path):
    _mixing(tmp_path)
    runs = tmp_path / "runs"
    suite = tmp_path / "suite"
    assert {t: len((suite / t / "train.jsonl").read_text().splitlines()) for t in TASKS} == (
        MIXING.QUICK.task_train_words
    )
    assert {len((suite / t / "val.jsonl").read_text().splitlines()) for t in TASKS} == {2}
    sizes = MIXING.QUICK
    lora = MIXING.adapter_overrides(LoraConfig(rank=MIXING.FULL_BUDGET, alpha=2.0 * MIXING.FULL_BUDGET))
    expected = MIXING.mixing_arms(lora, sizes.settings.steps, sizes.settings.warmup)  # experiment 1, as designed
    for name, design in expected.items():
        run = runs / name / "seed1"
        MIXING.check_config(run, [*design.overrides, *MIXING.schedule(sizes)])  # every override ran as written
        assert json.loads((run / "summary.json").read_text())["steps"] == 2
        losses = (run / "eval" / "sample_losses.jsonl").read_text().splitlines()
        assert len(losses) == 2 * len(TASKS)
    moving = {name for name, design in expected.items() if design.moving_mix}
    assert moving and all(_config(runs / name / "seed1")["balancer"]["apply_to"] == "sampling" for name in moving)

    report = (tmp_path / "docs" / "mixing.md").read_text()
    best = re.search(r"The best static mixing: `([^`]+)`", report)[1]
    assert best in STATS.STATIC
    second = sorted(p.name for p in runs.iterdir() if p.name not in expected)
    ranks: dict[str, list[int]] = {}  # method -> the budgets (LoRA ranks) it ran at, from the run directories
    for name in second:
        config = _config(runs / name / "seed1")
        assert config["data"]["mixing"] == best and config["balancer"]["name"] == "uniform"
        ranks.setdefault(config["adapter"]["name"], []).append(int(re.search(r"-r(\d+)-", name)[1]))
    mixtures = [name for name in compared_adapters(MIXING.FULL_BUDGET, 32.0) if name != baseline_adapter()]
    assert sorted(ranks) == sorted([baseline_adapter(), *mixtures])
    for name in mixtures:  # the full budget and one tight rank each, beside LoRA at that rank
        tight = [rank for rank in ranks[name] if rank != MIXING.FULL_BUDGET]
        assert MIXING.FULL_BUDGET in ranks[name] and len(tight) == 1 and tight[0] in MIXING.TIGHT_RANKS
        assert tight[0] in ranks[baseline_adapter()]
    prior = [name for name in second if _config(runs / name / "seed1")["adapter"].get("intuition_clusters")]
    assert len(prior) == 2  # MoR1E runs with its prior at both budgets
    rows = {line.split(" | ")[1].strip("`") for line in report.splitlines() if line.startswith("| ") and "`" in line}
    assert set(expected) | set(second) <= rows
    assert "## Paired differences against uniform LoRA (arm 2)" in report
    assert f"## Paired differences against the best static mixing (`{best}`)" in report
    sections = report.split("## Paired differences against ")[1:]
    assert len(sections) == 3
    for section in sections[:2]:  # every other arm, three verdicts each
        table = [line for line in section.split("\n\n")[1].splitlines() if line.startswith("| `")]
        assert len(table) == len(expected) + len(second) - 1
        assert all(len(re.findall(r"\| (?:better|worse|within noise) (?=\|)", line)) == 3 for line in table)
    third = [line for line in sections[2].split("\n\n")[1].splitlines() if line.startswith("| `")]
    assert len(third) == sum(len(budgets) for name, budgets in ranks.items() if name != baseline_adapter())
    for png in ("mixing_val_loss_1.png", "mixing_val_loss_2.png"):
        assert (tmp_path / "docs" / png).stat().st_size > 0

    scored = sorted(runs.glob("*/*/eval/eval.json"))
    before = {path: path.stat().st_mtime_ns for path in scored}
    first = report.index("## Experiment 1")  # people write the outcome above the tables; a render keeps it
    report = report[:first] + f"{REPORT.OUTCOME}\n\nWritten by hand.\n\n" + report[first:]
    (tmp_path / "docs" / "mixing.md").write_text(report)
    again = _mixing(tmp_path)
    assert "done uniform / seed 1" in again.stdout
    assert {path: path.stat().st_mtime_ns for path in scored} == before  # nothing trained or scored again
    undated = [line for line in report.splitlines() if not line.startswith("Made by")]
    rendered = (tmp_path / "docs" / "mixing.md").read_text().splitlines()
    assert [line for line in rendered if not line.startswith("Made by")] == undated
