"""Secrets from the environment never reach a config or a log."""

from __future__ import annotations

from mtft.logging.secrets import redact, secret_values

ENV = {"HF_TOKEN": "hf_abcdef123456", "WANDB_API_KEY": "0123456789abcdef", "PATH": "/usr/bin", "DEBUG": "1"}


def test_only_secret_looking_variables_count():
    assert secret_values(ENV) == {"0123456789abcdef": "WANDB_API_KEY", "hf_abcdef123456": "HF_TOKEN"}
    assert secret_values({"MY_TOKEN": "1"}) == {}  # too short to be a secret: a flag


def test_redact_nested_values_anywhere_in_a_string():
    config = {
        "model": {"token": "hf_abcdef123456"},
        "tags": ["x", "key=0123456789abcdef!"],
        "steps": 3,
        "p": "/usr/bin",
    }
    assert redact(config, secret_values(ENV)) == {
        "model": {"token": "<redacted:HF_TOKEN>"},
        "tags": ["x", "key=<redacted:WANDB_API_KEY>!"],
        "steps": 3,
        "p": "/usr/bin",  # PATH is not a secret
    }
