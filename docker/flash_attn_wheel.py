"""Print the URL of the prebuilt flash-attn wheel that matches this interpreter's torch, for the image build.

flash-attn publishes no wheels on the package index, and building it from source takes an hour and a GPU-sized
machine. Its GitHub releases carry prebuilt wheels named
``flash_attn-<ver>+cu<CUDA major>torch<torch major.minor>cxx11abi<TRUE|FALSE>-cp<py>-cp<py>-linux_x86_64.whl``
(the naming of releases 2.7 and later; older ones spelt the CUDA version out, e.g. ``cu123``). All four parts must
match the installed torch, or ``import flash_attn`` fails with an undefined symbol. A release has wheels only for
the torch versions that existed when it was made, so a newer torch needs a newer flash-attn or an explicit URL.

    python docker/flash_attn_wheel.py 2.8.3    # run where torch is installed
"""

from __future__ import annotations

import sys

RELEASES = "https://github.com/Dao-AILab/flash-attention/releases/download"


def wheel_name(version: str, cuda: str, torch_version: str, cxx11abi: bool, python: tuple[int, int]) -> str:
    """The release asset name for flash-attn ``version`` built against CUDA ``cuda`` (e.g. "12.8"), torch
    ``torch_version`` (e.g. "2.8.0+cu128") with the given C++ ABI, for CPython ``python`` (e.g. (3, 11))."""
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) < (2, 7):
        raise ValueError(f"flash-attn {version}: only releases 2.7 and later name their wheels cu<major>; pass a URL")
    torch_minor = ".".join(torch_version.split("+")[0].split(".")[:2])
    abi = "TRUE" if cxx11abi else "FALSE"
    py = f"cp{python[0]}{python[1]}"
    return f"flash_attn-{version}+cu{cuda.split('.')[0]}torch{torch_minor}cxx11abi{abi}-{py}-{py}-linux_x86_64.whl"


def wheel_url(version: str, name: str, releases: str = RELEASES) -> str:
    return f"{releases}/v{version}/{name.replace('+', '%2B')}"


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: flash_attn_wheel.py VERSION [RELEASES_URL]", file=sys.stderr)
        return 2
    import torch

    if torch.version.cuda is None:
        print(f"flash_attn_wheel.py: torch {torch.__version__} is not a CUDA build", file=sys.stderr)
        return 1
    name = wheel_name(
        argv[0], torch.version.cuda, torch.__version__, torch._C._GLIBCXX_USE_CXX11_ABI, sys.version_info[:2]
    )
    print(wheel_url(argv[0], name, *argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
