"""The adapters the experiments compare, sized by the registry, never by hand: each method's configuration at a LoRA
rank's trainable parameters on the model's own Linears (mtft.adapters.compared_adapters, each method's
at_lora_budget), passed to mtft-train as Hydra overrides. A new method, or a method whose sizing changes, reaches
every experiment with no edit here; a cached run made with other sizes is refused rather than reused
(`check_config`)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import yaml

from mtft.adapters import AdapterConfig, compared_adapters, run_settings

LORA_ALPHA_PER_RANK = 2  # alpha = 2 × rank at every budget: LoRA r16 alpha 32, r4 alpha 8


def meta_model(model_dir: Path):
    """The model of `model_dir` (its config.json) built on the meta device (no weights, no memory): its Linears
    are all `compared_adapters` needs."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))


@functools.cache
def configs_at(rank: int, model, runs: bool = True) -> dict[str, AdapterConfig]:
    """The registry's configurations at LoRA `rank`'s budget (alpha 2 × rank), by method, the baseline first; with
    `runs`, each method's run variants fixed and counted (MoR1E's intuition prior)."""
    return compared_adapters(rank, LORA_ALPHA_PER_RANK * rank, model, runs=runs)


def variants_at(rank: int, model) -> dict[str, AdapterConfig]:
    """Run name -> configuration at LoRA `rank`'s budget: every compared method at its defaults and, where it has
    run variants, again with them fixed (`mor1e`, then `mor1e+intuition_clusters_4`), each sized on its own."""
    plain, runs = configs_at(rank, model, runs=False), configs_at(rank, model, runs=True)
    variants = {}
    for name in dict.fromkeys([*plain, *runs]):
        for config in (plain.get(name), runs.get(name)):
            if config is not None:
                variants.setdefault(variant_name(config), config)
    return variants


def variant_name(config: AdapterConfig) -> str:
    """`mor1e+intuition_clusters_4`: the method and the settings of its run variants that the config holds (a path
    and a label)."""
    settings = {key: value for key, value in run_settings(type(config)).items() if getattr(config, key) == value}
    return "+".join([config.name, *(f"{key}_{value}" for key, value in settings.items())])


def adapter_overrides(config: AdapterConfig) -> tuple[str, ...]:
    """`adapter=<name>` and `adapter.<field>=<value>` for each field that differs from the config's default."""
    default = type(config)()
    changed = [f for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(default, f.name)]
    return (f"adapter={config.name}", *(f"adapter.{f.name}={hydra_value(getattr(config, f.name))}" for f in changed))


def hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    return str(value)


def check_config(run: Path, overrides: list[str]) -> None:
    """A cached run must be the arm's as it is now: its config.yaml holds every override (`group=name` as the
    group's name). Where the registry's budget configurations changed since, it is not reused silently."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    for override in overrides:
        key, value = override.split("=", 1)
        path = key.split(".") if "." in key else [key, "name"]
        held = config
        for part in path:
            held = held.get(part) if isinstance(held, dict) else None
        if held != yaml.safe_load(value):
            raise SystemExit(f"{run}: config.yaml has {key}={held}, the arm now says {value}; remove the run to redo")
