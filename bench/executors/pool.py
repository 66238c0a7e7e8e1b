"""`--jobs N`: N runs side by side in worker processes on this machine (spawned: a fork of a
process whose OpenMP threads have run can deadlock). Each worker prepares its suite context from
the cache the parent filled, and dies with the parent however the parent ends."""

from __future__ import annotations

import multiprocessing
import os
import signal
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

from bench.executors.base import Executor, Landed, Todo

if TYPE_CHECKING:
    from bench.config import Suite
    from bench.context import SuiteContext
    from bench.records import RunRecord


class PoolExecutor(Executor):
    name = "pool"
    summary = "--jobs N runs side by side in worker processes on this machine"
    in_process = False
    takes_jobs = True

    def refusal_for_local_strategies(self) -> str:
        return f"--jobs {self.jobs}"

    def run(self, todo: Todo, landed: Landed) -> None:
        context, jobs = self.context, self.jobs
        context.log(f"{len(todo)} runs, {jobs} at a time in worker processes ({context.suite.train.threads} "
                    "thread each)")
        pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                                   initargs=(context.suite, os.getpid(), context.out_dir, context.predictions))
        try:
            # Runs with regularisers (2-5x a plain step) first, so that the slowest do not start last.
            ordered = sorted(todo, key=lambda run: -len(run[0].regularizers))
            pending = {pool.submit(_run_in_worker, recipe.position, seed) for recipe, seed in ordered}
            error = None
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    if future.cancelled():
                        continue
                    if future.exception() is not None:  # no new runs; those under way still land
                        error = error or future.exception()
                        for other in pending:
                            other.cancel()
                        continue
                    landed(future.result())
            if error is not None:
                raise error
        except KeyboardInterrupt:
            # Workers ignore SIGINT; here queued runs are cancelled and SIGTERM stops the running ones
            # (an interrupt in the worker: a checkpoint being written is removed, no record written).
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
            pool.shutdown(wait=True)
            raise
        pool.shutdown(wait=True)


_worker: SuiteContext | None = None


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this worker when the process that started it exits, however it
    exits (kill -9 included). The check after it covers a parent that died before the call."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: workers finish their run, then find no parent
        return
    if os.getppid() != parent:
        os._exit(1)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _start_worker(suite: Suite, parent: int, out_dir: Path, predictions_wanted: bool) -> None:
    """A worker process's suite context: data, encoder and tokens from the cache the parent filled.
    `parent` comes from the parent itself: if it died while this worker started, getppid() here
    would already name the process that adopted the worker. Ctrl-C reaches the whole process
    group; the parent alone handles it and stops the workers."""
    from bench.context import SuiteContext

    global _worker
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    _worker = SuiteContext(suite, out_dir, log=lambda message: None, progress=False, predictions=predictions_wanted)
    _ = _worker.prepared


def _run_in_worker(position: int, seed: int) -> RunRecord | None:
    from bench.single_run import run_one

    return run_one(_worker, _worker.recipe_by_position(position), seed)
