"""`mtlbench run SUITE --executor ray [--address auto]`: each recipe x seed as a Ray task.

Each task asks for the suite's `threads` CPUs (and one GPU when the suite trains on CUDA, or on
`auto` where the cluster has GPUs), trains the run in a Ray worker with the same code as a local
run (bench.single_run.run_one: the run's lock, resume from its last checkpoint, the record written
atomically), and its record lands in the output directory as soon as it finishes. So the output
directory must be one every node can write (shared storage) - as it is on a local instance.
Runs already finished are skipped and unfinished ones resume, exactly as locally.

Ray is an optional extra: `pip install "mtlbench[ray]"`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

from mtlbench.bench.executors.base import Executor, Landed, Todo
from mtlbench.bench.executors.pool import stop_grace
from mtlbench.bench.files import remove_stray_temporaries
from mtlbench.bench.progress import shown
from mtlbench.tasks.errors import UserError

# Ray reuses its worker processes: one context per (suite, output directory) in each, so the data,
# the encoder and the tokens are prepared once per worker, not once per run.
_contexts: dict[tuple[str, str, bool], object] = {}


def _run_remote(suite, out_dir: str, predictions: bool, position: int, seed: int, board=None):
    from mtlbench.bench.context import SuiteContext
    from mtlbench.bench.single_run import run_one

    key = (json.dumps(suite.resolved(), sort_keys=True, default=str), out_dir, predictions)
    if key not in _contexts:
        _contexts[key] = SuiteContext(suite, Path(out_dir), log=lambda message: None, progress=False,
                                      predictions=predictions)
    context = _contexts[key]
    context.on_step = _BoardReport(board, (position, seed)) if board is not None else None
    return run_one(context, context.recipe_by_position(position), seed)


class _BoardReport:
    """A task's (step, total) to the driver through a Ray queue, at most once a second (and the
    last step): the pool's worker report, over Ray."""

    def __init__(self, board, key: tuple[int, int]):
        self.board, self.key, self.sent = board, key, 0.0

    def __call__(self, recipe, seed, step: int, total: int) -> None:
        if time.monotonic() - self.sent >= 1.0 or step == total:
            self.sent = time.monotonic()
            self.board.put_nowait((self.key, step, total))


def _gpus_per_run(device: str, cluster_gpus: float) -> int:
    if device.startswith("cuda"):
        return 1
    return 1 if device == "auto" and cluster_gpus > 0 else 0


class RayExecutor(Executor):
    name = "ray"
    summary = "each run a Ray task on a cluster (--address auto|HOST:PORT; default: a local instance)"
    in_process = False

    @classmethod
    def check_arguments(cls, jobs, address, world) -> None:
        if jobs or world > 1:
            raise UserError("--executor ray schedules runs by their resource requests: leave out --jobs, "
                            "and do not start it under torchrun")

    def run(self, todo: Todo, landed: Landed) -> list[str]:
        """Ctrl-C cancels the tasks (their last epoch checkpoints stay)."""
        try:
            import ray
        except ImportError:
            raise UserError('--executor ray needs Ray: pip install "mtlbench[ray]"') from None
        started_here = not ray.is_initialized()
        if started_here:
            ours = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(address=self.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            except ConnectionError as error:
                raise UserError(f"--address {self.address}: no Ray cluster there ({error})") from None
            if callable(ours) and threading.current_thread() is threading.main_thread():
                # Ray's core worker puts a fatal handler on SIGTERM (the process aborts): ours back,
                # so that SIGTERM stops the suite as Ctrl-C does
                signal.signal(signal.SIGTERM, ours)
        try:
            return self._submit_and_wait(ray, todo, landed)
        finally:
            if started_here:
                ray.shutdown()

    def _submit_and_wait(self, ray, todo: Todo, landed: Landed) -> list[str]:
        """Every run as a task; a task whose worker died is lost (reported), the others go on. The
        tasks report their steps through a Ray queue for the suite's progress display."""
        context, suite = self.context, self.context.suite
        gpus = _gpus_per_run(suite.train.device, ray.cluster_resources().get("GPU", 0))
        task = ray.remote(num_cpus=suite.train.threads, num_gpus=gpus, max_retries=0)(_run_remote)
        context.log(f"{len(todo)} runs as Ray tasks ({suite.train.threads} CPU{'s' * (suite.train.threads > 1)}"
                    f"{f', {gpus} GPU' if gpus else ''} each) on {ray.cluster_resources().get('CPU', 0):.0f} CPUs")
        slots = min(len(todo), int(ray.cluster_resources().get("CPU", 1) // suite.train.threads) or 1)
        with shown(context, len(todo), slots) as progress:
            board = None
            if progress is not None:
                from ray.util.queue import Queue

                board = Queue(actor_options={"num_cpus": 0})
            runs = {task.remote(suite, str(context.out_dir), context.predictions, recipe.position, seed, board):
                    (recipe, seed) for recipe, seed in todo}
            return self._wait(ray, runs, landed, progress, board)

    def _wait(self, ray, runs: dict, landed: Landed, progress, board) -> list[str]:
        from ray.exceptions import RayTaskError, WorkerCrashedError

        context, pending, lost = self.context, list(runs), []
        labels = {(recipe.position, seed): f"{recipe.name} seed {seed}" for recipe, seed in runs.values()}
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=None if board is None else 0.5)
                if board is not None:
                    _show_reports(board, progress, labels)
                if not done:
                    continue
                recipe, seed = runs[done[0]]
                labels.pop((recipe.position, seed))
                if progress is not None:
                    progress.end((recipe.position, seed))
                try:
                    landed(ray.get(done[0]))
                except WorkerCrashedError:
                    lost.append(f"{recipe.name} seed {seed} (its Ray worker died)")
                    context.log(f"      {recipe.name} seed {seed}: its Ray worker died; the other runs go on")
                except RayTaskError as error:  # no new runs; the error of the run, as a local run gives it
                    for ref in pending:
                        ray.cancel(ref)
                    cause = getattr(error, "cause", None)
                    raise (cause if isinstance(cause, Exception) else error) from None
        except KeyboardInterrupt:
            self._cancel(ray, pending)
            raise
        return lost

    def _cancel(self, ray, pending: list) -> None:
        """An interrupt: the waiting tasks never start, the running ones' workers are killed
        (force), and this returns once Ray reports them all ended (a second interrupt: at once)."""
        for ref in pending:
            ray.cancel(ref, force=True)
        try:
            ray.wait(pending, num_returns=len(pending), timeout=stop_grace())
        except KeyboardInterrupt:
            self.context.log("second interrupt: not waiting for the cancelled Ray tasks")
        remove_stray_temporaries(self.context.out_dir)  # a checkpoint a killed worker was writing


def _show_reports(board, progress, labels: dict) -> None:
    """The tasks' reports so far into the display (a run appears when its first step is reported;
    `labels` holds the runs not yet ended, so a late report does not bring one back)."""
    for key, step, total in board.get_nowait_batch(board.qsize()) if board.qsize() else ():
        if key not in labels:
            continue
        if key not in progress.running:
            progress.start(key, labels[key])
        progress.step(key, step, total)
