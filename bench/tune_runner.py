"""`mtlbench tune`, start to table: check the output folder and every recipe, hold out the
validation split, fill every recipe's study (bench.tuning) in this process, in `--jobs N` worker
processes or as Ray tasks (each runs the same loop against the shared storage), then run each recipe
with its best settings for the suite's seeds on the usual train/dev (bench.runner) and render the
table with its verdict (bench.verdict)."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

from mtlbench.bench import executors
from mtlbench.bench.config import Suite
from mtlbench.bench.context import SuiteContext
from mtlbench.bench.records import RunRecord
from mtlbench.bench.runner import RunInterrupted, Runner, check_output
from mtlbench.bench.tuning import (
    FOLDER,
    TRIALS,
    open_storage,
    settings_of,
    shown_url,
    storage_url,
    tune_worker,
    tuned_suite,
    tuning_suite,
)
from mtlbench.tasks.errors import UserError


def _spawned_worker(suite: Suite, out_dir: str, url: str) -> None:
    tune_worker(suite, out_dir, url, log=lambda message: print(message, file=sys.stderr))  # stdout: the table


def _ray_worker(suite: Suite, out_dir: str, url: str) -> None:
    tune_worker(suite, out_dir, url, log=lambda message: None)


def _fill_studies(suite: Suite, out: Path, url: str, jobs: int | None, executor: str, address: str | None,
                  log) -> None:
    prepared = SuiteContext(suite, out / FOLDER / TRIALS, log=log, progress=False).prepared  # held out once
    if executor == "ray":
        _on_ray(suite, out, url, jobs or 2, address, log)
    elif jobs and jobs > 1:
        log(f"tuning in {jobs} worker processes sharing {shown_url(url)}")
        spawn = multiprocessing.get_context("spawn")
        workers = [spawn.Process(target=_spawned_worker, args=(suite, str(out), url), daemon=True)
                   for _ in range(jobs)]
        for worker in workers:
            worker.start()
        try:
            for worker in workers:
                worker.join()
        except KeyboardInterrupt:
            for worker in workers:
                worker.terminate()
            raise
        failed = [w.exitcode for w in workers if w.exitcode]
        if failed:
            log(f"{len(failed)} tuning worker(s) ended with exit code {failed[0]}; checking the studies")
            tune_worker(suite, str(out), url, log, prepared)  # what they left: retried here
    else:
        tune_worker(suite, str(out), url, log, prepared)


def _on_ray(suite: Suite, out: Path, url: str, tasks: int, address: str | None, log) -> None:
    try:
        import ray
    except ImportError:
        raise UserError('--executor ray needs Ray: pip install "mtlbench[ray]"') from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=suite.train.threads, max_retries=0)(_ray_worker)
        log(f"tuning as {tasks} Ray tasks sharing {shown_url(url)}")
        ray.get([remote.remote(suite, str(out), url) for _ in range(tasks)])
    finally:
        if started_here:
            ray.shutdown()


def tune(suite: Suite, out: Path, trials: int | None = None, storage: str | None = None, jobs: int | None = None,
         executor: str = executors.LOCAL, address: str | None = None, final: bool = True, log=print,
         progress: bool = False) -> list[RunRecord]:
    """Tune every recipe at an equal budget, then (with `final`) run each with its best settings for
    the suite's seeds into `out`; the records there (empty without `final`)."""
    if executor not in (executors.LOCAL, "ray"):
        raise UserError(f"--executor {executor}: tune runs its trials here (local, --jobs N) or as Ray tasks (ray)")
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs: must be at least 1, got {jobs}")
    settings = settings_of(suite, trials)
    out = Path(out)
    with_settings = tuning_suite(suite, settings)
    SuiteContext(with_settings, out, log=log, progress=False).validate()  # before anything is written
    check_output(out)
    url = storage_url(out, storage)  # a --storage URL makes no folder: one that does not open leaves nothing
    open_storage(url)  # its tables made here, before several processes would race to make them
    log(f"tuning {len(with_settings.recipes)} recipes of suite '{suite.name}', {settings.trials} trials each, on "
        f"{settings.tune_fraction:.0%} of train held out (never dev or test); studies in {shown_url(url)}")
    try:
        _fill_studies(with_settings, out, url, jobs, executor, address, log)
    except KeyboardInterrupt:
        raise RunInterrupted(f"studies in {shown_url(url)}, trials in {out / FOLDER / TRIALS}; run the same command "
                             "again to continue them (an unfinished trial runs again with its parameters)") from None
    if not final:
        return []
    tuned = tuned_suite(suite, settings, url)
    for recipe in tuned.compared:
        log(f"  {recipe.name}: best trial {recipe.tuned['best_trial']} of {recipe.tuned['trials']} "
            f"({recipe.tuned['best_value']:.4f}): {recipe.tuned['parameters']}")
    runner = Runner(tuned, out, progress=progress, log=log)
    return runner.run(jobs, executor if executor == "ray" else executors.LOCAL, address)
