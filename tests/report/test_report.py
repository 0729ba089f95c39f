"""mtft-report on a real (short) run: valid PNGs of non-trivial size, and a summary that names every task."""

from __future__ import annotations

import math

import matplotlib.image
import pytest

from mtft.cli.report import main
from mtft.report import best_points, summary_markdown
from mtft.report.plots import plot_losses, plot_weights, weight_panels
from mtft.training.loop import train
from tests.helpers import compose_config, small_data_overrides

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run_dir(dist_group, small_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_run")
    overrides = [*small_data_overrides(small_tasks), "adapter=smora", "balancer=coba", "balancer.warmup_steps=2"]
    overrides += ["balancer.update_interval=1", "trainer.max_steps=12", "trainer.eval_steps=4"]
    train(compose_config([*overrides, "trainer.logging_steps=2", f"trainer.output_dir={out}"]))
    return out


def test_report_writes_valid_images_and_a_summary(run_dir, capsys):
    main([str(run_dir)])
    report = run_dir / "report"
    assert f"report: {report / 'summary.md'}" in capsys.readouterr().out
    for name in ("losses.png", "weights.png", "router_load.png", "balancer.png"):
        data = (report / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name
        pixels = matplotlib.image.imread(report / name)
        height, width = pixels.shape[:2]
        assert height >= 300 and width >= 500, name
        assert pixels[..., :3].std() > 0.05, name  # something was drawn, not a blank canvas
    summary = (report / "summary.md").read_text()
    assert "| add |" in summary and "| sentiment |" in summary and "Slowest task" in summary
    assert "![losses](losses.png)" in summary and "dead experts" in summary
    assert "| best val loss (step) | above best |" in summary


def test_a_run_without_routers_gets_no_router_plot(dist_group, small_tasks, tmp_path):
    train(
        compose_config([*small_data_overrides(small_tasks), "trainer.max_steps=2", f"trainer.output_dir={tmp_path}"])
    )
    main([str(tmp_path), "--out", str(tmp_path / "r")])
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == ["losses.png", "weights.png"]


def test_not_a_run_directory(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"{tmp_path / 'metrics.jsonl'}" in capsys.readouterr().err


def _records(val_losses: dict[int, float]) -> list[dict]:
    return [
        {"step": step, "loss": 1.0, "tokens_per_second": 10.0, "task/a/loss": 1.0, "task/a/weight": 1.0}
        | {"task/a/val_loss": loss}
        for step, loss in val_losses.items()
    ]


def test_the_report_names_each_tasks_best_and_how_far_above_it_the_loss_is(tmp_path):
    records = _records({2: 3.0, 4: 2.0, 6: math.nan, 8: 2.5})
    assert best_points(records, None) == {"a": (4, 2.0)}  # a run still training: the best logged so far
    markdown = summary_markdown(tmp_path, records, None, [])
    assert "| a | 3.0000 | 2.5000 | -16.7% | 2.0000 (4) | +25.0% | 1.000 | 1.0000 |" in markdown
    assert "Furthest above its best: **a** (validation loss now +25.0% over its best, 2.0000 at step 4)" in markdown
    # a finished run: summary.json's best, which counts the evaluation before step 1 (not in metrics.jsonl)
    task = {"initial_val_loss": 1.9, "final_val_loss": 2.5, "best_step": 0, "best_val_loss": 1.9, "rise": 0.3158}
    summary = {"steps": 8, "wall_seconds": 1.0, "tokens": 10, "trainable_parameters": 5, "tasks": {"a": task}}
    assert best_points(records, summary) == {"a": (0, 1.9)}
    assert "| a | 1.9000 | 2.5000 | +31.6% | 1.9000 (0) | +31.6% |" in summary_markdown(tmp_path, records, summary, [])
    older = {**summary, "tasks": {"a": {"initial_val_loss": 1.9, "final_val_loss": 2.5}}}  # from before best_*
    assert best_points(records, older) == {"a": (4, 2.0)}


def test_the_loss_plot_marks_each_tasks_best(tmp_path):
    records = _records({2: 3.0, 4: 2.0, 6: 2.5})
    plain = plot_losses(records, tmp_path / "plain.png").read_bytes()
    marked = plot_losses(records, tmp_path / "marked.png", {"a": (4, 2.0)}).read_bytes()
    assert marked != plain


def test_a_mix_that_moved_is_plotted_beside_the_weights(tmp_path):
    """balancer.apply_to=sampling: the loss's weights stay 1 and the mix moves; weights.png gets a panel for the mix
    (twice as wide), and a run whose mix never moved keeps the one panel."""
    moving = [
        {"step": s, "task/a/weight": 1.0, "task/b/weight": 1.0, "task/a/mix": m, "task/b/mix": 1 - m}
        for s, m in ((1, 0.5), (2, 0.6), (3, 0.7))
    ]
    still = [{**r, "task/a/mix": 0.5, "task/b/mix": 0.5} for r in moving]
    assert list(weight_panels(moving)) == ["weight", "mix"] and list(weight_panels(still)) == ["weight"]
    images = [plot_weights(records, tmp_path / f"{i}.png") for i, records in enumerate((moving, still))]
    widths = [matplotlib.image.imread(image).shape[1] for image in images]
    assert widths[0] == 2 * widths[1]
