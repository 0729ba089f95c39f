"""DeepSpeed lives behind one seam: training/engine.py (the engine, sharding, gathering, consolidation, sharded
loading) and the parameter views in mtft/distributed.py. Nothing else imports DeepSpeed or reads its internals."""

from __future__ import annotations

import re
from pathlib import Path

import mtft

SEAM = {"mtft/training/engine.py", "mtft/distributed.py"}
# an import of deepspeed or its transformers integration, an engine internal, a sharded parameter's attributes
DEEPSPEED = re.compile(
    r"^\s*(import deepspeed|from deepspeed)|HfDeepSpeedConfig|zero_optimization_stage|_zero3_|GatheredParameters"
    r"|zero_to_fp32|\bds_(numel|shape|tensor|id)\b",
    re.MULTILINE,
)


def test_every_deepspeed_call_is_in_the_seam():
    root = Path(mtft.__file__).parent
    outside = [
        f"{rel}:{text[: m.start()].count(chr(10)) + 1}: {m.group(0).strip()}"
        for path in root.rglob("*.py")
        if (rel := path.relative_to(root.parent).as_posix()) not in SEAM
        for text in [path.read_text()]
        for m in DEEPSPEED.finditer(text)
    ]
    assert not outside, outside


def test_the_seam_holds_them():
    root = Path(mtft.__file__).parent.parent
    assert all(DEEPSPEED.search((root / rel).read_text()) for rel in SEAM)
