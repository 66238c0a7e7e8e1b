"""Where a suite's runs execute, behind one small interface (bench.executors.base.Executor). Every
module of this package defines one; `EXECUTORS` (name -> class) is the one table that the CLI's
`--executor` choices, the API and docs/scale.md read, so a new executor is one file here.

`local` (the default) is not an executor of its own but the choice this machine makes: under
torchrun, `torchrun`; with more than one run to train and `--jobs` (default: one per `threads`
cores on CPU, or $MTLBENCH_JOBS; 1 on an accelerator) above 1, `pool`; else `inline`."""

from __future__ import annotations

import importlib
import os
import pkgutil
from typing import TYPE_CHECKING

from mtlbench.bench.executors.base import Executor, Todo, check_reachable, strategies_registered_here
from mtlbench.tasks.errors import UserError, nearest

if TYPE_CHECKING:
    from mtlbench.bench.context import SuiteContext

LOCAL = "local"


def _discover() -> dict[str, type[Executor]]:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    found, pending = {}, list(Executor.__subclasses__())
    while pending:
        cls = pending.pop(0)
        found[cls.name] = cls
        pending.extend(cls.__subclasses__())
    return dict(sorted(found.items()))


EXECUTORS: dict[str, type[Executor]] = _discover()
CHOICES = (LOCAL, *EXECUTORS)


def describe() -> dict[str, str]:
    """Each --executor value with its one-line summary (the CLI's help, the docs)."""
    return {LOCAL: "this machine: torchrun's processes, a worker pool for --jobs N, or inline",
            **{name: cls.summary for name, cls in EXECUTORS.items()}}


def check_arguments(name: str, jobs: int | None, address: str | None, world: int) -> None:
    """Refuse an unknown executor or options it does not take, before anything is read."""
    jobs_from_environment()
    if name == LOCAL:
        if world > 1:
            EXECUTORS["torchrun"].check_arguments(jobs, address, world)
        elif address is not None:
            raise UserError("--address: the address of a Ray cluster, for --executor ray")
        return
    if name not in EXECUTORS:
        raise UserError(f"--executor: unknown executor '{name}'{nearest(name, CHOICES)}; "
                        f"executors: {', '.join(CHOICES)}")
    EXECUTORS[name].check_arguments(jobs, address, world)


def default_jobs(context: SuiteContext, runs: int) -> int:
    """Runs side by side: one per `threads` CPU cores on CPU (or MTLBENCH_JOBS, when set: a shared
    machine, a test process beside others); one at a time on an accelerator, or when a strategy
    exists only in this process."""
    if context.device.type != "cpu" or strategies_registered_here(context.suite):
        return 1
    asked = jobs_from_environment()
    if asked is not None:
        return max(1, min(runs, asked))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(runs, cores // context.suite.train.threads))


def jobs_from_environment() -> int | None:
    """MTLBENCH_JOBS: the default of --jobs on CPU (unset: one run per `threads` cores)."""
    value = os.environ.get("MTLBENCH_JOBS", "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise UserError(f"MTLBENCH_JOBS={value!r}: expected a number of runs side by side, 1 or more")
    return int(value)


def choose(name: str, context: SuiteContext, todo: Todo, jobs: int | None = None,
           address: str | None = None) -> Executor:
    """The executor for `todo` (arguments already checked by `check_arguments`)."""
    if name == LOCAL:
        if context.ranks.active:
            name = "torchrun"
        else:
            jobs = jobs or default_jobs(context, max(len(todo), 1))
            name = "pool" if jobs > 1 and len(todo) > 1 else "inline"
    elif name == "pool":
        jobs = jobs or default_jobs(context, max(len(todo), 1))
    executor = EXECUTORS[name](context, jobs, address)
    check_reachable(executor)
    return executor
