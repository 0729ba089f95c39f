"""Progress output: plain lines off a terminal (launchers, log files), a bar on one, nothing off rank 0."""

from __future__ import annotations

from mtft.logging.progress import Progress, use_bars

RECORD = {"step": 20, "loss": 1.5, "lr": 1e-3, "tokens_per_second": 1234.0}


def test_bars_only_on_rank_zero_and_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert not use_bars("auto", 0) and use_bars("bar", 0) and not use_bars("bar", 1)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert use_bars("auto", 0) and not use_bars("lines", 0) and not use_bars("auto", 1)


def test_plain_lines_name_the_slowest_task(capsys):
    progress = Progress("lines", rank=0, max_steps=100, start=0)
    progress.step(2.0, {"add": 4.0, "sort": 4.0})
    progress.step(1.5, {"add": 2.0, "sort": 3.8})  # add halved, sort barely moved
    progress.logged({**RECORD, "task/add/val_loss": 2.1})
    line = capsys.readouterr().out.strip()
    assert line.startswith("step 20/100  loss 1.5000") and "val add=2.100" in line and line.endswith("slowest sort")


def test_other_ranks_print_nothing(capsys):
    progress = Progress("lines", rank=1, max_steps=100, start=0)
    progress.logged(RECORD)
    assert capsys.readouterr().out == ""
