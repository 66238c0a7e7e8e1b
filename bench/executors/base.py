"""The interface every executor implements: run a list of one suite's runs (recipe x seed), each
through bench.single_run.run_one, and hand each record to `landed` as it arrives. An executor
never trains anything itself; it decides where and when `run_one` is called."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from mtlbench.strategies import registry
from mtlbench.tasks.errors import UserError

if TYPE_CHECKING:  # the executors' modules stay light: the CLI reads their table to parse its options
    from mtlbench.bench.config import Recipe, Suite
    from mtlbench.bench.context import SuiteContext


class RunsLost(Exception):
    """Runs whose process died (a killed worker): the others landed and the tables were rendered;
    running the same command again resumes the lost ones. The CLI exits 1."""

    def __init__(self, lost: list[str], out_dir):
        super().__init__(f"{len(lost)} run{'s' * (len(lost) > 1)} lost: {'; '.join(lost)}; the others are in "
                         f"{out_dir}; run the same command again to resume the lost from their last checkpoint")
        self.lost = lost


Landed = Callable[..., None]  # landed(RunRecord or None, head=None): logs and counts a run that ended
Todo = list[tuple["Recipe", int]]


class Executor(ABC):
    """Where a suite's runs execute. Subclasses set `name` (the --executor value), `summary` (one
    line for the CLI's help and the docs) and `in_process` (whether runs execute in this process,
    where a strategy registered at run time exists)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    in_process: ClassVar[bool] = True
    takes_jobs: ClassVar[bool] = False  # --jobs N: N runs at a time

    def __init__(self, context: SuiteContext, jobs: int | None = None, address: str | None = None):
        self.context, self.jobs, self.address = context, jobs, address

    @classmethod
    def check_arguments(cls, jobs: int | None, address: str | None, world: int) -> None:
        """Refuse options this executor does not take, before anything is read or trained (a
        UserError naming the option); `world`: the processes torchrun started (1 without it). The
        default: no --address, not under torchrun, --jobs only if `takes_jobs`."""
        if address is not None:
            raise UserError("--address: the address of a Ray cluster, for --executor ray")
        if world > 1:
            raise UserError(f"--executor {cls.name}: under torchrun every process trains each run together; "
                            "leave --executor out")
        if jobs is not None and jobs > 1 and not cls.takes_jobs:
            raise UserError(f"--jobs {jobs}: --executor {cls.name} trains one run at a time in this process")

    def refusal_for_local_strategies(self) -> str:
        """The option to name when a strategy registered at run time cannot reach the workers."""
        return f"--executor {self.name}"

    @abstractmethod
    def run(self, todo: Todo, landed: Landed) -> list[str]:
        """Execute every (recipe, seed) of `todo`; `landed(record)` as each ends (None: another
        process held it). Returns the runs lost to a fault of their process (a killed worker), one
        line each, after the others have ended. An error a run raises stops new runs; those under
        way still land."""


def strategies_registered_here(suite: Suite) -> list[str]:
    """Strategies of this suite that another process would not find (see registry.discoverable)."""
    used = {(axis, spec.name) for recipe in suite.recipes for axis, spec in recipe.strategies()}
    return sorted(f"{axis} '{name}'" for axis, name in used if not registry.discoverable(registry.get(axis, name)))


def check_reachable(executor: Executor) -> None:
    """An executor whose runs execute in other processes cannot use a strategy registered at run time."""
    if executor.in_process:
        return
    here = strategies_registered_here(executor.context.suite)
    if here:
        raise UserError(f"{executor.refusal_for_local_strategies()}: {', '.join(here)} registered at run time, so "
                        "worker processes cannot find it; use --jobs 1, or put it in a module of strategies/ or an "
                        "entry point")
