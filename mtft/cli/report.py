"""`mtft-report RUN_DIR [--out DIR]`: a run's loss, weight, router and balancer plots as PNGs, and a markdown
summary beside them, from metrics.jsonl alone. Works on a finished run or one still training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mtft.errors import UserError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mtft-report", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run's trainer.output_dir")
    parser.add_argument("--out", type=Path, help="where the report goes (default RUN_DIR/report)")
    args = parser.parse_args(argv)
    from mtft.report import write_report

    try:
        summary = write_report(args.run_dir, args.out)
    except UserError as err:
        print(f"mtft-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    images = sorted(p.name for p in summary.parent.glob("*.png"))
    print(f"report: {summary} (with {', '.join(images)})")


if __name__ == "__main__":
    main()
