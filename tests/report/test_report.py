"""mtft-report on a real (short) run: valid PNGs of non-trivial size, and a summary that names every task."""

from __future__ import annotations

import matplotlib.image
import pytest

from mtft.cli.report import main
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
