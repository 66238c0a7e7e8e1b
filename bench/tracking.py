"""Live scalars of a run for the trackers people watch (`[tracking] report_to`): every `log_every`
training steps each task's loss, the learning rate, the gradient norm, the combiner's task weights
and pairwise gradient cosines where it computes them, the loss scale and skipped steps, examples/s;
after each epoch the dev metrics; once the resolved config and, at the end, the final metrics.
One tracker run per run, named SUITE/RECIPE/seedN, under OUT/tracking/ (one suite is one
experiment). A resumed run continues the same tracker run from the checkpoint's step and no step
appears twice: TensorBoard and the CSV drop what a killed run logged after the checkpoint
(purge_step; cut back); MLflow and W&B cannot delete points, so they skip steps the killed run
already logged (a resumed run repeats them exactly). Under data parallelism rank 0 alone logs
(its caller's rule). A tracker that fails while logging is dropped with a warning; the run goes on."""

from __future__ import annotations

import csv
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mtlbench.bench.files import exclusive, write_text_atomic
from mtlbench.bench.mlflow_writer import MLFLOW_NAME
from mtlbench.tasks.errors import UserError

SERIES_POINTS = 256  # the most steps a record's series keeps (thinned by halving, bench.tracking.StepSeries)


@dataclass(frozen=True)
class TrackedRun:
    """Whose scalars: one suite is one experiment, a recipe's seeds are runs side by side."""

    suite: str
    recipe: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.suite}/{self.recipe}/seed{self.seed}"


LIBRARIES = {"tensorboard": "torch.utils.tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # tracker -> module


def check_installed(names: list[str]) -> None:
    """A one-line error naming the extra of the first tracker whose library is missing."""
    for name in names:
        if name in LIBRARIES:
            _needs(name)


def _needs(tracker: str):
    """The tracker's library (its extra has the tracker's name), or a one-line error naming the extra."""
    try:
        return __import__(LIBRARIES[tracker], fromlist=["_"])
    except ImportError as error:
        raise UserError(f"report_to '{tracker}' needs the {tracker} extra: pip install 'mtlbench[{tracker}]'") \
            from error


class CsvTracker:
    """OUT/tracking/csv/SUITE/RECIPE/seedN.csv, one `step,name,value` row per scalar."""

    def __init__(self, root: Path, run: TrackedRun, resume_step: int, hyperparameters: Mapping[str, object]):
        self.path = root / "csv" / f"{run.name}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resume_step and self.path.exists():  # cut back to the checkpoint: no step twice
            with self.path.open(newline="") as handle:
                kept = [row for row in csv.reader(handle) if row and row[0] != "step" and int(row[0]) <= resume_step]
        self.handle = self.path.open("w", newline="")
        self.writer = csv.writer(self.handle)
        self.writer.writerow(["step", "name", "value"])
        self.writer.writerows(kept)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        self.writer.writerows([step, name, repr(value)] for name, value in scalars.items())

    def flush(self) -> None:  # at each epoch's end (Trackers.flush); Python's buffer between
        self.handle.flush()

    def finish(self, step: int, final: Mapping[str, float], failed: bool) -> None:
        self.log(step, final)

    def close(self) -> None:
        self.handle.close()


class TensorBoardTracker:
    """Event files under OUT/tracking/tensorboard/SUITE/RECIPE/seedN (point `tensorboard --logdir`
    at OUT/tracking/tensorboard: one suite is one experiment, a recipe's seeds side by side). Through
    TensorBoard's own event writer, one event a logged step holding all its scalars (torch's
    SummaryWriter makes one a scalar: ~3 % of a tiny model's step at 12 scalars)."""

    def __init__(self, root: Path, run: TrackedRun, resume_step: int, hyperparameters: Mapping[str, object]):
        _needs("tensorboard")
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        from torch.utils.tensorboard.summary import text

        self.Event, self.Summary = Event, Summary
        self.writer = EventFileWriter(str(root / "tensorboard" / run.name), flush_secs=5)
        # a restart at resume_step + 1: readers drop what a killed run (or an earlier start) logged after it
        self.writer.add_event(Event(step=resume_step + 1, session_log=SessionLog(status=SessionLog.START)))
        if not resume_step:
            config = "\n".join(f"    {k}: {v}" for k, v in hyperparameters.items())
            self.writer.add_event(Event(wall_time=time.time(), step=0, summary=text("config", config)))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [self.Summary.Value(tag=name, simple_value=value) for name, value in scalars.items()]
        self.writer.add_event(self.Event(wall_time=time.time(), step=step, summary=self.Summary(value=values)))

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, step: int, final: Mapping[str, float], failed: bool) -> None:
        self.log(step, final)

    def close(self) -> None:
        self.writer.close()




class MlflowTracker:
    replays = True  # on resume it logs again what its store lacks (its `log` skips what it holds)
    """One MLflow run per run in the experiment named after the suite, tagged with its recipe and
    seed. The store is MLFLOW_TRACKING_URI if set, else SQLite at OUT/tracking/mlflow.db (MLflow's
    file store is in maintenance mode): `mlflow ui --backend-store-uri sqlite:///OUT/tracking/mlflow.db`."""

    def __init__(self, root: Path, run: TrackedRun, resume_step: int, hyperparameters: Mapping[str, object]):
        _needs("mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(root / 'mlflow.db').resolve()}"
        root.mkdir(parents=True, exist_ok=True)
        with exclusive(root / "mlflow.lock", wait=True):  # --jobs: one process creates the tables and experiment
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(run.suite)
            experiment = found.experiment_id if found else self.client.create_experiment(
                run.suite, artifact_location=(root / "mlflow-artifacts").resolve().as_uri())  # not the cwd's mlruns/
        earlier = self.client.search_runs([experiment], f"tags.`mtlbench.run` = '{run.name}'")
        self.logged = 0  # steps up to here are in the store (a killed run's)
        if resume_step and earlier:
            self.run_id = earlier[0].info.run_id
            self.logged = max((m.step for key in earlier[0].data.metrics
                               for m in self.client.get_metric_history(self.run_id, key)), default=0)
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            for stale in earlier:  # started afresh: the old series would mix with the new one
                self.client.delete_run(stale.info.run_id)
            self.run_id = self.client.create_run(experiment, run_name=run.name, tags={
                "mtlbench.run": run.name, "suite": run.suite, "recipe": run.recipe, "seed": str(run.seed)}).info.run_id
            params = [Param(MLFLOW_NAME.sub(":", k), str(v)[:6000]) for k, v in hyperparameters.items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                self.client.log_batch(self.run_id, params=params[start:start + 100])

        # The writes go through a process of their own (bench.mlflow_writer; a subprocess, which a
        # worker of --jobs may start): here a logged step is one JSON line down a pipe.
        package_root = str(Path(__file__).resolve().parents[1])
        self.writer = subprocess.Popen(
            [sys.executable, "-m", "mtlbench.bench.mlflow_writer", uri, self.run_id], stdin=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))})

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        if step > self.logged:
            self.writer.stdin.write(json.dumps([step, int(time.time() * 1000), dict(scalars)]) + "\n")

    def flush(self) -> None:
        if not self.writer.stdin.closed:  # closed: finished
            self.writer.stdin.write("flush\n")
            self.writer.stdin.flush()

    def finish(self, step: int, final: Mapping[str, float], failed: bool) -> None:
        self.logged = 0
        self.log(step, final)
        self.close()
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")

    def close(self) -> None:
        if not self.writer.stdin.closed:
            self.writer.stdin.close()  # the writer writes what is pending and ends
        if self.writer.wait():
            raise RuntimeError(f"the MLflow writer process ended with exit code {self.writer.returncode}")


class WandbTracker:
    replays = True  # offline, a kill loses W&B's buffer; its `log` skips steps below starting_step
    """One W&B run per run: project WANDB_PROJECT (default "mtlbench"), group = the suite, job type =
    the recipe, name SUITE/RECIPE/seedN, files under OUT/tracking/wandb; offline with
    WANDB_MODE=offline (then `wandb sync`). The run's id is kept in OUT/tracking/wandb-runs/ so that a
    resumed run continues the same W&B run. W&B keeps a run's steps increasing: online, a resumed run
    starts after the last step the server holds (`starting_step`) and sends nothing before it; offline
    (where a kill -9 loses what W&B had not flushed, often everything) it logs from the checkpoint on
    and `wandb sync` drops the steps the killed run's file already holds."""

    def __init__(self, root: Path, run: TrackedRun, resume_step: int, hyperparameters: Mapping[str, object]):
        wandb = _needs("wandb")
        identity = (root / "wandb-runs" / run.name).with_suffix(".id")
        if resume_step and identity.exists():
            self.id = identity.read_text().strip()
        else:
            self.id = uuid.uuid4().hex[:16]
            write_text_atomic(identity, self.id)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mtlbench"), group=run.suite,
                              job_type=run.recipe, name=run.name, id=self.id, resume="allow", dir=str(root),
                              config=dict(hyperparameters), tags=[run.recipe, f"seed{run.seed}"],
                              reinit="create_new", settings=wandb.Settings(silent=True))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        if step >= self.run.starting_step:
            self.run.log(dict(scalars), step=step)

    def finish(self, step: int, final: Mapping[str, float], failed: bool) -> None:
        self.run.summary.update(dict(final))
        self.run.finish(exit_code=1 if failed else 0)

    def close(self) -> None:
        pass  # finish() ends the W&B run; a killed one is continued by its resume


TRACKER_TYPES = {"csv": CsvTracker, "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker,
                 "wandb": WandbTracker}


class Trackers:
    """The run's trackers behind one `log`, written by a thread of their own: the training step pays
    a queue put, never a tracker's I/O or serialisation (tests/benchmarks/tracking_overhead.py).
    `flush` waits until all that was logged is written. No trackers: nothing is done, nothing is
    read from the device. A tracker that fails is dropped with a warning; the run goes on."""

    def __init__(self, names: list[str], out_dir: Path, run: TrackedRun, resume_step: int = 0,
                 hyperparameters: Mapping[str, object] | None = None):
        root = out_dir / "tracking"
        self.trackers = {name: TRACKER_TYPES[name](root, run, resume_step, hyperparameters or {}) for name in names}
        self.run, self.requested = run, bool(names)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._write, daemon=True, name=f"trackers {run.name}")
        self.thread.start()

    def __bool__(self) -> bool:
        return self.requested

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        finite = {name: float(value) for name, value in scalars.items() if value is not None}
        self.queue.put(("log", step, finite))

    def replay(self, points: list[tuple[int, dict[str, float]]]) -> None:
        """On resume, to trackers that may have lost what a killed run logged (MLflow, W&B offline)."""
        self.queue.put(("replay", points))

    def flush(self) -> None:
        """Everything logged so far on disk (called at the end of each epoch, before its checkpoint:
        what a resumed run does not log again must not be lost to a kill)."""
        written = threading.Event()
        self.queue.put(("flush", written))
        while not written.wait(1.0) and self.thread.is_alive():
            pass

    def finish(self, step: int, final: Mapping[str, float], failed: bool = False) -> None:
        """The final metrics, and the tracker run marked finished (or failed: a diverged run)."""
        self.queue.put(("finish", step, final, failed))
        self.flush()

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()

    def _write(self) -> None:
        for method, *arguments in iter(self.queue.get, None):
            written = arguments.pop() if method == "flush" else None
            for name, tracker in list(self.trackers.items()):
                if method == "replay" and getattr(tracker, "replays", False):  # each point again, by its log
                    self._call(name, tracker, "log_points", *arguments)
                elif hasattr(tracker, method):  # flush: the trackers that have one
                    self._call(name, tracker, method, *arguments)
            if written is not None:
                written.set()
        for name, tracker in list(self.trackers.items()):
            self._call(name, tracker, "close")

    def _call(self, name: str, tracker, method: str, *arguments) -> None:
        try:
            if method == "log_points":
                for step, scalars in arguments[0]:
                    tracker.log(step, scalars)
            else:
                getattr(tracker, method)(*arguments)
        except Exception as error:  # noqa: BLE001 -- a tracker's fault (any library's) never costs the run
            del self.trackers[name]
            print(f"warning: {self.run.name}: tracker '{name}' stopped ({type(error).__name__}: {error}); "
                  "the run goes on", file=sys.stderr)


class StepSeries:
    """The logged step scalars a record keeps: at most SERIES_POINTS steps, thinned by keeping every
    other one (the steps kept are the multiples of `every`), so any run length fits the same size and
    a resumed run's series equals an uninterrupted one's."""

    def __init__(self, every: int, kept: Mapping | None = None):
        kept = kept or {}
        self.every = kept.get("every", every)
        self.steps: list[int] = list(kept.get("steps", []))
        self.values: dict[str, list[float | None]] = {k: list(v) for k, v in kept.get("values", {}).items()}

    def add(self, step: int, scalars: Mapping[str, float | None]) -> None:
        if step % self.every:
            return
        for name in scalars:
            if name not in self.values:  # first seen now (in the order logged: plots colour by it)
                self.values[name] = [None] * len(self.steps)
        self.steps.append(step)
        for name, column in self.values.items():
            value = scalars.get(name)
            column.append(None if value is None or not math.isfinite(value) else float(value))
        if len(self.steps) > SERIES_POINTS:
            self.every *= 2
            keep = [i for i, s in enumerate(self.steps) if s % self.every == 0]
            self.steps = [self.steps[i] for i in keep]
            self.values = {name: [column[i] for i in keep] for name, column in self.values.items()}

    def to_dict(self) -> dict:
        return {"every": self.every, "steps": self.steps, "values": self.values}


def logged_points(series: Mapping | None, history: list[dict]) -> list[tuple[int, dict[str, float]]]:
    """What a run logged up to now, by step, from its record's series (thinned) and per-epoch history."""
    points: dict[int, dict[str, float]] = {}
    if series:
        for i, step in enumerate(series["steps"]):
            points[step] = {name: column[i] for name, column in series["values"].items() if column[i] is not None}
    for epoch in history:
        points.setdefault(epoch["step"], {}).update({**flatten("dev", epoch["dev"]),
                                                     **flatten("epoch_train_loss", epoch["train_loss"])})
    return sorted(points.items())


def flatten(prefix: str, table: Mapping) -> dict[str, float]:
    """{"dev/sst/accuracy": ...} from {"sst": {"accuracy": ...}}: the names trackers show as groups."""
    flat = {}
    for key, value in table.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(name, value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat
