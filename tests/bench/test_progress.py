"""The suite's progress from its workers' step reports: the ETA and the status line, on a clock the
test sets (no timing of the machine)."""

import pytest
from mtlbench.bench import progress


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    return now


def test_eta_scales_the_elapsed_time_by_what_is_left(clock):
    lines = []
    suite = progress.SuiteProgress(total=2, slots=2, log=lines.append, live=False)
    assert suite.eta() is None and suite.status() == "progress: 0.0 of 2 runs"
    suite.start("a", "a seed 0")
    suite.step("a", 5, 10)  # a quarter of the suite after 10 s: 30 s left
    clock[0] += 10
    assert suite.done_fraction() == 0.25 and suite.eta() == pytest.approx(30.0)
    assert suite.status() == "progress: 0.5 of 2 runs, about 30 s left; running: a seed 0 50%"
    suite.end("a")
    suite.start("b", "b seed 0")
    clock[0] += 110  # half the suite in 120 s: 2 min left
    assert suite.status() == "progress: 1.0 of 2 runs, about 2 min 00 s left; running: b seed 0 0%"


def test_status_lines_come_at_most_every_interval(clock, monkeypatch):
    monkeypatch.setenv("MTLBENCH_STATUS_SECONDS", "60")
    lines = []
    suite = progress.SuiteProgress(total=1, slots=1, log=lines.append, live=False)
    suite.start("a", "a seed 0")
    for step in range(1, 11):
        clock[0] += 15
        suite.step("a", step, 10)
    assert lines == ["progress: 0.4 of 1 run, about 1 min 30 s left; running: a seed 0 40%",
                     "progress: 0.8 of 1 run, about 30 s left; running: a seed 0 80%"]
