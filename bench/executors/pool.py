"""`--jobs N`: N runs side by side in worker processes on this machine (spawned: a fork of a
process whose OpenMP threads have run can deadlock). Each worker prepares its suite context from
the cache the parent filled, takes one run at a time over its own pipe, and dies with the parent
however the parent ends.

A worker that dies (killed, out of memory) is a fault to survive, not to propagate: its run is
reported lost (recipe, seed, signal), a new worker takes the runs still waiting, and the other
runs go on; the command then ends non-zero, and running it again resumes the lost run from its last
checkpoint. An error a run raises (bad input found late, a full disk) stops new runs; those under
way still land, then the error is raised."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import TYPE_CHECKING

from mtlbench.bench.executors.base import Executor, Landed, Todo
from mtlbench.bench.files import remove_stray_temporaries
from mtlbench.bench.progress import shown
from mtlbench.tasks.errors import UserError

if TYPE_CHECKING:
    from mtlbench.bench.config import Recipe, Suite


@dataclass
class _Worker:
    process: multiprocessing.Process
    pipe: Connection
    run: tuple[Recipe, int] | None = None  # the run it was given and has not answered yet


class PoolExecutor(Executor):
    name = "pool"
    summary = "--jobs N runs side by side in worker processes on this machine"
    in_process = False
    takes_jobs = True

    def refusal_for_local_strategies(self) -> str:
        return f"--jobs {self.jobs}"

    def run(self, todo: Todo, landed: Landed) -> list[str]:
        # A killed worker leaves a lock the resource tracker cleans at exit with a warning that reads
        # like a fault of ours; the tracker process takes its warning filters from these options.
        if "ignore::UserWarning:multiprocessing.resource_tracker" not in sys.warnoptions:
            sys.warnoptions.append("ignore::UserWarning:multiprocessing.resource_tracker")
        context, self.grace = self.context, stop_grace()
        context.log(f"{len(todo)} runs, {self.jobs} at a time in worker processes ({context.suite.train.threads} "
                    "thread each)")
        # Runs with regularisers (2-5x a plain step) first, so that the slowest do not start last.
        self.waiting = sorted(todo, key=lambda run: -len(run[0].regularizers))
        self.workers: list[_Worker] = []
        self.lost: list[str] = []
        self.error: BaseException | None = None
        with shown(context, len(todo), self.jobs) as self.progress:
            try:
                for _ in range(min(self.jobs, len(todo))):
                    self._give_work(self._start_worker())
                while any(w.run is not None for w in self.workers):
                    self._wait_once(landed)
            except KeyboardInterrupt:
                self._interrupt()
                raise
        self._stop()
        if self.error is not None:
            raise self.error
        return self.lost

    def _start_worker(self) -> _Worker:
        context = self.context
        ours, theirs = multiprocessing.Pipe()
        process = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(theirs, context.suite, os.getpid(), context.out_dir, context.predictions),
            daemon=True)
        process.start()
        theirs.close()
        worker = _Worker(process, ours)
        self.workers.append(worker)
        return worker

    def _give_work(self, worker: _Worker) -> None:
        if self.waiting and self.error is None:
            run = self.waiting.pop(0)
            try:
                worker.pipe.send((run[0].position, run[1]))
            except OSError:  # it died between its last answer and this run: the run waits for another
                self.waiting.insert(0, run)
                self._replace(worker)
                return
            worker.run = run
            if self.progress is not None:
                self.progress.start((run[0].position, run[1]), f"{run[0].name} seed {run[1]}")

    def _ended(self, run) -> None:
        if self.progress is not None:
            self.progress.end((run[0].position, run[1]))

    def _wait_once(self, landed: Landed) -> None:
        """The next answers or deaths; a worker's answer is read before its death is noticed."""
        busy = [w for w in self.workers if w.run is not None]
        ready = set(wait([w.pipe for w in busy] + [w.process.sentinel for w in busy]))
        for worker in busy:
            if worker.pipe in ready:
                try:
                    kind, value = worker.pipe.recv()
                except (EOFError, OSError):  # it died before answering
                    self._lose(worker)
                    continue
                if kind == "progress":
                    if self.progress is not None:
                        self.progress.step((worker.run[0].position, worker.run[1]), *value)
                    continue
                self._ended(worker.run)
                worker.run = None
                if kind == "error":
                    self.error = self.error or value
                else:
                    landed(value)
                self._give_work(worker)
        for worker in busy:
            if worker.run is not None and worker.process.sentinel in ready:
                self._lose(worker)

    def _lose(self, worker: _Worker) -> None:
        worker.process.join()
        code = worker.process.exitcode
        how = f"signal {-code} ({signal.Signals(-code).name})" if code and code < 0 else f"exit status {code}"
        recipe, seed = worker.run
        self._ended(worker.run)
        self.lost.append(f"{recipe.name} seed {seed} ({how})")
        self.context.log(f"      {recipe.name} seed {seed}: its worker process ended ({how}); the other runs go on, "
                         "and running the same command again resumes it from its last checkpoint")
        worker.run = None
        self._replace(worker)

    def _replace(self, worker: _Worker) -> None:
        """A dead worker out, a new one in while runs wait."""
        worker.process.join()
        worker.pipe.close()
        self.workers.remove(worker)
        if self.waiting and self.error is None:
            self._give_work(self._start_worker())

    def _stop(self) -> None:
        """Every run answered: each worker told to end, and waited for."""
        for worker in self.workers:
            try:
                worker.pipe.send(None)
            except (OSError, ValueError):  # already gone
                pass
        for worker in self.workers:
            worker.process.join()
            worker.pipe.close()

    def _interrupt(self) -> None:
        """Ctrl-C or SIGTERM: no run starts after it; the running ones are stopped (SIGTERM: an
        interrupt in the worker, at its next Python instruction, so within the step; a checkpoint
        being written is removed, no record written) and waited for at most `self.grace` seconds,
        then killed; a second interrupt kills them at once. Returns when every worker is gone."""
        self.waiting.clear()
        try:
            for worker in self.workers:
                if worker.process.is_alive():
                    worker.process.terminate()
            self.context.log(f"interrupted: stopping the runs under way (killed after {self.grace:g} s; "
                             "interrupt again to kill them now)")
            deadline = time.monotonic() + self.grace
            for worker in self.workers:
                worker.process.join(max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:
            self.context.log("second interrupt: killing the workers now")
        killed = [worker for worker in self.workers if worker.process.is_alive()]
        for worker in killed:
            worker.process.kill()
        for worker in self.workers:
            worker.process.join()
            worker.pipe.close()
        if killed:
            runs = ", ".join(f"{w.run[0].name} seed {w.run[1]}" for w in killed if w.run is not None)
            self.context.log(f"killed {len(killed)} worker(s) still running after the interrupt ({runs or 'idle'}); "
                             "their runs resume from their last epoch checkpoint")
            remove_stray_temporaries(self.context.out_dir)  # a checkpoint a killed worker was writing


def stop_grace() -> float:
    """Seconds a worker gets to stop after an interrupt before it is killed (MTLBENCH_STOP_GRACE,
    default 30): a step that does not return to Python (one long native op) cannot be interrupted."""
    value = os.environ.get("MTLBENCH_STOP_GRACE", "30")
    try:
        grace = float(value)
    except ValueError:
        raise UserError(f"MTLBENCH_STOP_GRACE={value!r}: expected seconds, e.g. 30") from None
    if not grace >= 0:
        raise UserError(f"MTLBENCH_STOP_GRACE={value!r}: expected seconds, 0 or more")
    return grace


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


_stopping = False  # set by SIGTERM in a worker: it takes no run after it, even if its interrupt were swallowed


def _interrupt(signum, frame):
    global _stopping
    _stopping = True
    raise KeyboardInterrupt


def _serve(pipe: Connection, suite: Suite, parent: int, out_dir: Path, predictions: bool) -> None:
    """A worker process: its suite context (data, encoder and tokens from the cache the parent
    filled), then one run per message until it gets None. `parent` comes from the parent itself:
    if it died while this worker started, getppid() here would already name the process that
    adopted the worker. Ctrl-C reaches the whole process group; the parent alone handles it."""
    from mtlbench.bench.context import SuiteContext
    from mtlbench.bench.single_run import run_one

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)
    context = None
    try:
        while (job := pipe.recv()) is not None and not _stopping:
            try:
                if context is None:
                    context = SuiteContext(suite, out_dir, log=lambda message: None, progress=False,
                                           predictions=predictions)
                    context.on_step = _ProgressReport(pipe)
                    _ = context.prepared
                pipe.send(("record", run_one(context, context.recipe_by_position(job[0]), job[1])))
            except Exception as error:  # noqa: BLE001 - the parent raises it, as a local run would
                pipe.send(("error", _picklable(error)))
    except (KeyboardInterrupt, EOFError):
        pass


class _ProgressReport:
    """A worker's (step, total) to the parent, at most once a second (and the last step)."""

    def __init__(self, pipe: Connection):
        self.pipe, self.sent = pipe, 0.0

    def __call__(self, recipe, seed, step: int, total: int) -> None:
        if time.monotonic() - self.sent >= 1.0 or step == total:
            self.sent = time.monotonic()
            self.pipe.send(("progress", (step, total)))


def _picklable(error: Exception) -> Exception:
    import pickle

    try:
        pickle.dumps(error)
        return error
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(error).__name__}: {error}")
