"""`mtft-bench <suite> [--out FILE]`: run a benchmark suite, print its ratios, write the full JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from mtft.bench import COMMANDS, SUITES

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:  # its own options, table and exit status
        sys.exit(COMMANDS[argv[0]](argv[1:]))
    parser = argparse.ArgumentParser(prog="mtft-bench", description=__doc__)
    parser.add_argument("suite", choices=sorted([*SUITES, *COMMANDS]))
    parser.add_argument("--out", type=Path, help="write the measured times and ratios here as JSON")
    args = parser.parse_args(argv)
    result = SUITES[args.suite]()
    print(json.dumps(result, indent=2))
    print(f"\n{'ratio':<45}{'value':>10}")
    for name, value in result["ratios"].items():
        print(f"{name:<45}{value:>10.4f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
        print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
