"""Keep secrets out of configs and logs: any value of an environment variable whose name says it is a secret
(an API key, a token, a password) is replaced wherever it appears, e.g. pulled in by ${oc.env:HF_TOKEN}."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH", re.IGNORECASE)
MIN_LENGTH = 6  # shorter values ("1", "true") are flags, and replacing them would mangle ordinary text


def secret_values(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """{value: variable name} for every secret-looking variable in the environment."""
    environ = os.environ if environ is None else environ
    found = {v: k for k, v in environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_LENGTH}
    return dict(sorted(found.items(), key=lambda item: -len(item[0])))  # longest first: no partial overlaps


def redact(value: Any, secrets: dict[str, str] | None = None) -> Any:
    """`value` (strings, lists, dicts, nested) with every secret replaced by <redacted:VARIABLE>."""
    secrets = secret_values() if secrets is None else secrets
    if isinstance(value, str):
        for secret, name in secrets.items():
            value = value.replace(secret, f"<redacted:{name}>")
        return value
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)
    return value
