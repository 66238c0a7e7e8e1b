"""The estimator behind every paired cost figure (the table's `cost x`, the method benchmarks):
rounds of one block per variant in one process, the order alternating, each variant's ratio to the
baseline taken within a round; rounds are added until the 95 % interval of each median ratio is
within ±`target` of it, or the cap is reached (then the result says it is not precise).

The clock (docs/statistics.md): on CPU the block's CPU time - of the calling thread with one
intra-op thread (where all of a step's work runs), of the process with more - since another
process on the machine takes the core away from a block without adding to its CPU time; the wall
clock is kept beside it. On CUDA the wall clock after synchronising the device, since the kernels'
time is not CPU time.

The interval of a median is distribution-free: between two order statistics of the n ratios,
chosen from Binomial(n, 1/2) so that it holds the true median with probability >= 95 %.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Clock:
    """Which time a block is judged by: "thread_cpu", "process_cpu" or "wall" (CUDA: synchronised)."""

    kind: str
    synchronize: Callable[[], None] | None = None

    @classmethod
    def for_device(cls, device_type: str, threads: int, synchronize: Callable[[], None] | None = None,
                   choice: str = "auto") -> Clock:
        if choice == "wall" or device_type != "cpu":
            return cls("wall", synchronize if device_type != "cpu" else None)
        return cls("thread_cpu" if threads == 1 else "process_cpu")

    def read(self) -> tuple[float, float]:
        """(the judged clock, the wall clock), in seconds."""
        if self.synchronize is not None:
            self.synchronize()
        wall = time.perf_counter()
        if self.kind == "thread_cpu":
            return time.thread_time(), wall
        if self.kind == "process_cpu":
            return time.process_time(), wall
        return wall, wall


def median_interval(values: list[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The distribution-free interval of the median: (x_(k), x_(n-k+1)) with the largest k whose
    coverage 1 - 2 P(Binomial(n, 1/2) < k) is at least `confidence`; None when n is too small
    (n < 6 at 95 %)."""
    n = len(values)
    best, below = None, 0.0  # below: P(B <= k - 1), B ~ Binomial(n, 1/2)
    for k in range(1, n // 2 + 1):
        below += math.comb(n, k - 1) / 2 ** n
        if 1 - 2 * below < confidence:
            break
        best = k
    if best is None:
        return None
    ordered = sorted(values)
    return ordered[best - 1], ordered[n - best]


def is_precise(values: list[float], target: float) -> bool:
    """The median's interval within ±target of the median (relative)."""
    interval = median_interval(values)
    if interval is None:
        return False
    middle = statistics.median(values)
    return interval[1] <= middle * (1 + target) and interval[0] >= middle * (1 - target)


def pooled(costs: list[dict]) -> tuple[list[float], float, tuple[float, float] | None]:
    """Every round's ratio of several runs' records (`cost.ratios`), their median and its 95 %
    interval: a recipe's figure over its seeds (the table's `cost x`, the gate's)."""
    ratios = [x for cost in costs for x in cost.get("ratios", [])]
    return ratios, (statistics.median(ratios) if ratios else math.nan), median_interval(ratios)


@dataclass
class PairedResult:
    """Per variant: the per-round ratios to the baseline on the judged clock and on the wall clock,
    and each block's seconds per unit (example or step) on both."""

    baseline: str
    clock: str
    target: float
    ratios: dict[str, list[float]] = field(default_factory=dict)
    wall_ratios: dict[str, list[float]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    wall_seconds: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return len(next(iter(self.seconds.values()), []))

    def summary(self, name: str) -> dict:
        """The variant's median ratio with its interval, whether that met the target, the same on
        the wall clock, and the medians of the seconds."""
        ratios, wall = self.ratios[name], self.wall_ratios[name]
        interval = median_interval(ratios)
        wall_interval = median_interval(wall)
        return {"ratio": statistics.median(ratios), "ratio_ci": list(interval) if interval else None,
                "precise": is_precise(ratios, self.target), "target": self.target, "clock": self.clock,
                "rounds": self.rounds, "ratios": ratios,
                "wall_ratio": statistics.median(wall), "wall_ratio_ci": list(wall_interval) if wall_interval else None,
                "wall_ratios": wall,
                "seconds": statistics.median(self.seconds[name]),
                "baseline_seconds": statistics.median(self.seconds[self.baseline]),
                "wall_seconds": statistics.median(self.wall_seconds[name])}


def paired_rounds(blocks: Mapping[str, Callable[[int], float]], baseline: str, clock: Clock, min_rounds: int,
                  max_rounds: int, target: float) -> PairedResult:
    """Run rounds of `blocks` (name -> block(round) returning the units it processed) until every
    variant's median ratio to `baseline` is precise to `target`, at least min(min_rounds,
    max_rounds) and at most `max_rounds` rounds. Warm-up is the caller's."""
    result = PairedResult(baseline, clock.kind, target, seconds={n: [] for n in blocks},
                          wall_seconds={n: [] for n in blocks})
    others = [name for name in blocks if name != baseline]
    for name in others:
        result.ratios[name], result.wall_ratios[name] = [], []
    # Python's collector off: a collection of the whole process's objects lands in one block at
    # random (measured: a fifth of a 0.15 s block, and twice the rounds' spread)
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        _rounds(blocks, result, clock, others, min(min_rounds, max_rounds), max_rounds)
    finally:
        if collecting:
            gc.enable()
    return result


def _rounds(blocks, result: PairedResult, clock: Clock, others: list[str], min_rounds: int, max_rounds: int) -> None:
    baseline, target = result.baseline, result.target
    for r in range(max_rounds):
        order = list(blocks) if r % 2 == 0 else list(reversed(blocks))  # none always goes first
        for name in order:
            (judged, wall) = clock.read()
            units = blocks[name](r)
            (judged_end, wall_end) = clock.read()
            result.seconds[name].append((judged_end - judged) / units)
            result.wall_seconds[name].append((wall_end - wall) / units)
        for name in others:
            result.ratios[name].append(result.seconds[name][-1] / result.seconds[baseline][-1])
            result.wall_ratios[name].append(result.wall_seconds[name][-1] / result.wall_seconds[baseline][-1])
        if r + 1 >= min_rounds and all(is_precise(result.ratios[n], target) for n in others):
            break
