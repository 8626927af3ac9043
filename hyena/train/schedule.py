"""The paper's learning-rate schedule: linear warm-up, cosine decay to a floor, then constant."""

from __future__ import annotations

import math


def warmup_decay(step: int, total_steps: int, warmup_frac: float = 0.025, min_ratio: float = 0.1,
                 decay_frac: float = 1.0) -> float:
    """LR multiplier at `step` (0-based) of `total_steps`.

    Warm-up is linear over `warmup_frac` of the steps (at least one step), then a cosine decay
    from 1 to `min_ratio` over the next `decay_frac` of the steps, then `min_ratio` to the end.
    Scavenging Hyena: 2.5% warm-up, decay to 10% of the max LR.
    """
    warmup = max(1, round(warmup_frac * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    decay = max(1, round(decay_frac * total_steps) - warmup)
    progress = min(1.0, (step - warmup) / decay)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
