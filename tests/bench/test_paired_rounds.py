"""The paired-rounds estimator (bench.paired_rounds): the median's interval against the binomial
law it comes from, the stopping rule, and the clocks."""

import random
import statistics
import time

import pytest
from mtlbench.bench.paired_rounds import Clock, is_precise, median_interval, paired_rounds
from scipy.stats import binom


@pytest.mark.parametrize("n", [6, 7, 9, 10, 20, 31, 100, 401])
def test_the_median_interval_is_the_widest_order_statistic_pair_at_95_percent(n):
    values = random.Random(n).sample(range(10 * n), n)
    low, high = median_interval(values)
    ordered = sorted(values)
    k = ordered.index(low) + 1
    assert high == ordered[n - k]
    coverage = lambda k: 1 - 2 * binom.cdf(k - 1, n, 0.5)
    assert coverage(k) >= 0.95 > coverage(k + 1)


def test_too_few_values_have_no_interval_and_are_never_precise():
    assert median_interval([1.0] * 5) is None
    assert not is_precise([1.0] * 5, 0.03)
    assert median_interval([1.0] * 6) == (1.0, 1.0) and is_precise([1.0] * 6, 0.03)


def test_precision_is_relative_to_the_median_at_any_scale():
    spread = [0.98, 0.99, 1.0, 1.0, 1.01, 1.02, 1.0, 0.99, 1.01]
    for scale in (1e-9, 1.0, 1e9):
        assert is_precise([v * scale for v in spread], 0.03)
        assert not is_precise([v * scale for v in spread], 0.005)  # the interval is 0.99 to 1.01


class _FakeClock(Clock):
    """A clock that the blocks advance by the seconds they say they took."""

    def __init__(self):
        super().__init__("thread_cpu")
        object.__setattr__(self, "now", [0.0])

    def read(self):
        return self.now[0], self.now[0] * 2  # the wall clock runs twice as slow: kept apart


def _blocks(clock, costs):
    def block(cost):
        def run(round_index):
            clock.now[0] += cost(round_index)
            return 4  # units per block
        return run
    return {name: block(cost) for name, cost in costs.items()}


def test_rounds_stop_once_precise_and_the_ratio_is_the_known_one():
    clock = _FakeClock()
    result = paired_rounds(_blocks(clock, {"sum": lambda r: 1.0, "pcgrad": lambda r: 1.07}), "sum", clock,
                           min_rounds=6, max_rounds=40, target=0.03)
    assert result.rounds == 6
    summary = result.summary("pcgrad")
    assert summary["ratio"] == pytest.approx(1.07) and summary["ratio_ci"] == pytest.approx([1.07, 1.07])
    assert summary["precise"] and summary["wall_ratio"] == pytest.approx(1.07)
    assert summary["seconds"] == pytest.approx(1.07 / 4) and summary["wall_seconds"] == pytest.approx(2 * 1.07 / 4)


def test_noisy_rounds_go_on_to_the_cap_and_say_they_are_not_precise():
    clock, noise = _FakeClock(), random.Random(0)
    result = paired_rounds(_blocks(clock, {"sum": lambda r: 1.0, "slow": lambda r: 1.2 * noise.uniform(0.5, 1.5)}),
                           "sum", clock, min_rounds=6, max_rounds=15, target=0.03)
    summary = result.summary("slow")
    assert result.rounds == 15 and not summary["precise"]
    low, high = summary["ratio_ci"]
    assert low < summary["ratio"] < high and summary["ratio"] == statistics.median(summary["ratios"])


def test_moderate_noise_stops_between_the_floor_and_the_cap():
    clock, noise = _FakeClock(), random.Random(1)
    result = paired_rounds(_blocks(clock, {"sum": lambda r: 1.0, "m": lambda r: 1.5 * noise.gauss(1, 0.03)}),
                           "sum", clock, min_rounds=6, max_rounds=200, target=0.03)
    assert 6 < result.rounds < 200 and result.summary("m")["precise"]
    assert result.summary("m")["ratio"] == pytest.approx(1.5, rel=0.03)


def test_a_cap_below_the_floor_runs_exactly_the_cap():
    clock = _FakeClock()
    result = paired_rounds(_blocks(clock, {"sum": lambda r: 1.0, "x": lambda r: 2.0}), "sum", clock,
                           min_rounds=6, max_rounds=2, target=0.03)
    assert result.rounds == 2 and result.summary("x")["ratio_ci"] is None and not result.summary("x")["precise"]


def test_the_clock_on_cpu_is_cpu_time_and_ignores_sleeping():
    """Time the process does not run (here: asleep, as when another process holds the core) is
    not charged to a block on the CPU clocks; it is on the wall clock."""
    assert Clock.for_device("cpu", 1).kind == "thread_cpu"
    assert Clock.for_device("cpu", 4).kind == "process_cpu"
    assert Clock.for_device("cpu", 1, choice="wall").kind == "wall"
    synced = []
    assert Clock.for_device("cuda", 1, lambda: synced.append(1)).kind == "wall"
    for clock in (Clock.for_device("cpu", 1), Clock.for_device("cpu", 4)):
        cpu, wall = clock.read()
        time.sleep(0.2)
        cpu_end, wall_end = clock.read()
        assert wall_end - wall >= 0.2 and cpu_end - cpu < 0.1
    cuda = Clock.for_device("cuda", 1, lambda: synced.append(1))
    cuda.read()
    assert synced == [1]


def test_the_collector_is_off_during_the_rounds_and_restored_after():
    import gc

    seen, clock = [], _FakeClock()

    def block(round_index):
        seen.append(gc.isenabled())
        clock.now[0] += 1.0
        return 1
    assert gc.isenabled()
    paired_rounds({"sum": block, "x": block}, "sum", clock, min_rounds=6, max_rounds=6, target=0.03)
    assert seen == [False] * 12 and gc.isenabled()
    gc.disable()  # a caller that had it off keeps it off
    try:
        paired_rounds({"sum": block, "x": block}, "sum", clock, min_rounds=6, max_rounds=6, target=0.03)
        assert not gc.isenabled()
    finally:
        gc.enable()
