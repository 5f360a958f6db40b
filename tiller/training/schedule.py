"""Learning-rate schedules: a multiplier of the base learning rate for each optimizer step.

    factor = lr_schedule("cosine", warmup_steps=10, total_steps=100)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)   # or: lr = base_lr * factor(step)

`step` counts optimizer steps already taken (LambdaLR's convention: 0 before the first). Warmup rises
linearly from 0 (step / warmup_steps); after it, `constant` stays at 1, `linear` falls to 0 at
`total_steps` and `cosine` follows half a cosine period down to 0 there (Loshchilov & Hutter, SGDR,
https://arxiv.org/abs/1608.03983, without restarts). Past `total_steps` the factor stays where it ended.
These are the shapes of transformers' `get_{constant,linear,cosine}_schedule_with_warmup`, so a stage
compared with TRL on the same settings steps at the same learning rates.
"""

from __future__ import annotations

import math
from typing import Callable

KINDS = ("constant", "linear", "cosine")


def lr_schedule(kind: str, warmup_steps: int = 0, total_steps: int = 0) -> Callable[[int], float]:
    """The multiplier function of schedule `kind` (one of KINDS). `total_steps` is needed by `linear` and
    `cosine` (it must exceed `warmup_steps`); `constant` ignores it."""
    if kind not in KINDS:
        raise ValueError(f"learning-rate schedule {kind!r}: expected one of {', '.join(KINDS)}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps is {warmup_steps}: it cannot be negative")
    if kind != "constant" and total_steps <= warmup_steps:
        raise ValueError(f"a {kind} schedule needs total_steps ({total_steps}) above warmup_steps ({warmup_steps})")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
