"""Schedules: drop fraction p(t), density d(t), per-layer allocation (uniform / ERK)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class DropSchedule:
    """Fraction of each layer's active blocks pruned (and regrown) at a topology update.

    ``cosine``: p0 -> p_end following half a cosine between ``start`` and ``end`` (the reference:
    0.2 -> 0.005 at the last step); ``linear``: straight line; ``constant``: p0 throughout.
    """

    kind: str = "cosine"
    p0: float = 0.2
    p_end: float = 0.005
    start: int = 0
    end: int = 1

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.p0
        span = max(self.end - self.start, 1)
        x = min(max((step - self.start) / span, 0.0), 1.0)
        if self.kind == "linear":
            return self.p0 + (self.p_end - self.p0) * x
        if self.kind == "cosine":
            return self.p_end + (self.p0 - self.p_end) * 0.5 * (1.0 + math.cos(math.pi * x))
        raise ValueError(f"unknown drop schedule {self.kind!r}")


@dataclass(frozen=True)
class DensitySchedule:
    """Target density over training.

    ``constant``: ``final`` from the first step. ``gradual``: the polynomial (cubic by default)
    schedule of Zhu & Gupta, from ``initial`` at ``start`` to ``final`` at ``end``:
    d(t) = final + (initial - final) * (1 - x)^power, x = (t - start) / (end - start) in [0, 1].
    """

    kind: str = "constant"
    final: float = 0.5
    initial: float = 1.0
    start: int = 0
    end: int = 1
    power: float = 3.0

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.final
        span = max(self.end - self.start, 1)
        x = min(max((step - self.start) / span, 0.0), 1.0)
        return self.final + (self.initial - self.final) * (1.0 - x) ** self.power

    @property
    def max_density(self) -> float:
        return self.final if self.kind == "constant" else max(self.initial, self.final)


def erk_densities(shapes: Sequence[tuple[int, int]], density: float, power_scale: float = 1.0) -> list[float]:
    """Erdos-Renyi-Kernel allocation for linear layers (out, in): d_l proportional to
    ((in + out) / (in * out)) ** power_scale, scaled so the total active count is ``density``
    of all weights; layers that would exceed 1 are fixed dense and the rest rescaled."""
    sizes = [o * i for o, i in shapes]
    raw = [((o + i) / (o * i)) ** power_scale for o, i in shapes]
    dense: set[int] = set()
    total = density * sum(sizes)
    while True:
        budget = total - sum(sizes[j] for j in dense)
        denom = sum(raw[j] * sizes[j] for j in range(len(shapes)) if j not in dense)
        eps = budget / denom if denom > 0 else 0.0
        over = [j for j in range(len(shapes)) if j not in dense and eps * raw[j] > 1.0]
        if not over:
            break
        dense.update(over)
    return [1.0 if j in dense else eps * raw[j] for j in range(len(shapes))]


def active_blocks(n_blocks: int, density: float) -> int:
    """Exact active block count for a layer (at least one block)."""
    return max(1, min(n_blocks, int(round(density * n_blocks))))
