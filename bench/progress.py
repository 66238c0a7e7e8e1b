"""What a suite's runs in worker processes are doing: on a terminal, a bar per running run and one
for the suite with its ETA; elsewhere (a log file, CI), a status line a minute (status_seconds). The
workers report (step, total steps) of their run, at most once a second (bench.executors.pool).

The ETA is the suite's elapsed time scaled by what is left, counting each running run by its share
of steps done: evaluation between epochs is not a step, so the estimate runs a little short while
runs evaluate."""

from __future__ import annotations

import contextlib
import os
import sys
import time

from mtlbench.tasks.errors import counted


def status_seconds() -> float:
    """Seconds between status lines when no bars are drawn (MTLBENCH_STATUS_SECONDS, default 60)."""
    try:
        return max(float(os.environ.get("MTLBENCH_STATUS_SECONDS", "60")), 0.0)
    except ValueError:
        return 60.0


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


class SuiteProgress:
    """Progress of `total` runs, `slots` at a time. `live`: bars on a terminal; else `log` lines."""

    def __init__(self, total: int, slots: int, log, live: bool | None = None):
        self.total, self.log, self.started = total, log, time.monotonic()
        self.live = sys.stderr.isatty() if live is None else live
        self.finished = 0
        self.running: dict[object, tuple[str, float]] = {}  # key -> (label, fraction of its steps done)
        self.bars: dict[object, object] = {}
        self.last_status, self.every = self.started, status_seconds()
        self.drawn = -1.0  # when the bars were last redrawn
        self.suite_bar = self._bar(0, "suite", total, "runs") if self.live else None
        self.free_positions = list(range(1, slots + 1))

    @staticmethod
    def _bar(position: int, label: str, total: float, unit: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=label, position=position, unit=unit, leave=position == 0, dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.0f} {unit} [{elapsed}<{remaining}]"
                    if position == 0 else "{desc}: {percentage:3.0f}%|{bar}| step {n:.0f}/{total:.0f}")

    def start(self, key, label: str) -> None:
        self.running[key] = (label, 0.0)
        if self.live and self.free_positions:
            self.bars[key] = (self._bar(self.free_positions.pop(0), label, 1, "steps"))

    def step(self, key, step: int, total: int) -> None:
        if key not in self.running or total <= 0:
            return
        label, _ = self.running[key]
        self.running[key] = (label, min(step / total, 1.0))
        if time.monotonic() - self.drawn < 0.5 and step < total:  # in-process reports come every step
            return
        self.drawn = time.monotonic()
        bar = self.bars.get(key)
        if bar is not None:
            bar.total, bar.n = total, step
            bar.refresh()
        self._update()

    def end(self, key, counted: bool = True) -> None:
        self.running.pop(key, None)
        self.finished += counted
        bar = self.bars.pop(key, None)
        if bar is not None:
            self.free_positions.append(bar.pos)
            bar.close()
        self._update()

    def done_fraction(self) -> float:
        return (self.finished + sum(f for _, f in self.running.values())) / max(self.total, 1)

    def eta(self) -> float | None:
        """Seconds left, from the pace so far; None before anything has moved."""
        done = self.done_fraction()
        return None if done <= 0 else (time.monotonic() - self.started) * (1 - done) / done

    def status(self) -> str:
        eta = self.eta()
        running = ", ".join(f"{label} {fraction:.0%}" for label, fraction in self.running.values())
        return (f"progress: {self.done_fraction() * self.total:.1f} of {counted(self.total, 'run')}"
                + (f", about {_duration(eta)} left" if eta is not None else "")
                + (f"; running: {running}" if running else ""))

    def _update(self) -> None:
        if self.suite_bar is not None:
            self.suite_bar.n = round(self.done_fraction() * self.total, 2)
            self.suite_bar.refresh()
        elif time.monotonic() - self.last_status >= self.every:
            self.last_status = time.monotonic()
            self.log(self.status())

    def close(self) -> None:
        for key in list(self.bars):
            self.end(key, counted=False)
        if self.suite_bar is not None:
            self.suite_bar.close()


@contextlib.contextmanager
def shown(context, runs: int, slots: int):
    """The suite's progress for an executor (None with --no-progress); while bars are drawn, the
    context's log lines are written above them instead of through them."""
    if not context.progress:
        yield None
        return
    log = context.log
    progress = SuiteProgress(runs, slots, log)
    if progress.live:
        from tqdm import tqdm

        context.log = lambda message: tqdm.write(message, file=sys.stderr)
    try:
        yield progress
    finally:
        progress.close()
        context.log = log
