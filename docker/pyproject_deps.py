"""Print mtft's runtime dependencies from pyproject.toml, one per line, so the image installs them in a layer of
their own: a change to mtft's code then reinstalls only mtft, not transformers, datasets and the rest. The image's
extras come too: `serve`, so that the container can run mtft-serve.

    python docker/pyproject_deps.py pyproject.toml > requirements.txt
"""

from __future__ import annotations

import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib


EXTRAS = ("serve",)


def dependencies(pyproject: str, extras: tuple[str, ...] = EXTRAS) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    return [*project["dependencies"], *(dep for extra in extras for dep in project["optional-dependencies"][extra])]


if __name__ == "__main__":
    print("\n".join(dependencies(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml")))
