"""Print `name==version` for every package a GPU image lacks to run mtft, at the versions of the running Python
environment (the one the tests pass in), for scripts/gpu/wheels.sh.

The image is assumed to hold IMAGE and whatever they depend on, but not MISSING (the issue's list of what such
an image lacked): the answer is MISSING and all of their dependencies that the image does not bring, with the
dependency markers read for the GPU machine's Python (`--python-version`, Linux x86_64). Extras are not
followed, as pip does not follow them for these packages either (this environment runs without them).
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

IMAGE = ["torch", "transformers", "peft", "triton", "pytest"]
# Also in the lent H100/H200 image (its package list, 2026-11-17); carrying them would push the wheels past the
# 64 MiB a device call may carry (pyarrow alone is about 40 MB). Their versions there differ from this venv's.
IMAGE_ALSO = ["pyarrow", "pandas", "python-dateutil", "einops", "msgpack", "ninja", "py-cpuinfo", "xxhash", "psutil"]
MISSING = ["deepspeed", "datasets", "hydra-core", "omegaconf", "antlr4-python3-runtime", "hjson", "pydantic"]


def closure(roots: list[str], python_version: str, blocked: frozenset[str] = frozenset()) -> dict[str, str | None]:
    """Every installed distribution reachable from `roots` (version None: required but not installed here),
    not walking through `blocked`."""
    marker_env = {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    found: dict[str, str | None] = {}
    todo = [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in found or name in blocked:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            found[name] = None
            continue
        found[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(marker_env):
                todo.append(canonicalize_name(req.name))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python, for dependency markers")
    args = parser.parse_args()
    missing = frozenset(canonicalize_name(n) for n in MISSING)
    image = closure(IMAGE + IMAGE_ALSO, args.python_version, blocked=missing)
    needed = {n: v for n, v in closure(MISSING, args.python_version).items() if n not in image}
    absent = sorted(n for n, v in needed.items() if v is None)
    if absent:
        print(f"not installed in {sys.prefix}, cannot match a version: {', '.join(absent)}", file=sys.stderr)
        return 1
    print("\n".join(f"{name}=={version}" for name, version in sorted(needed.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
