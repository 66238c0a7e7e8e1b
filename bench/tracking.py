"""Live scalars of a run for the trackers people watch (`[tracking] report_to`): every `log_every`
training steps each task's loss, the learning rate, the gradient norm, the combiner's task weights
and pairwise gradient cosines where it computes them, the loss scale and skipped steps, examples/s;
after each epoch the dev metrics. One tracker run per run, named SUITE/RECIPE/seedN, under
OUT/tracking/. A resumed run continues the same series from the checkpoint's step: what a killed
run logged after it is dropped (TensorBoard's purge_step; the CSV is cut back), so no step appears
twice. Under data parallelism rank 0 alone logs (its caller's rule)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

from tasks.errors import UserError


class CsvTracker:
    """OUT/tracking/csv/SUITE/RECIPE/seedN.csv, one `step,name,value` row per scalar."""

    def __init__(self, root: Path, name: str, resume_step: int):
        self.path = root / "csv" / f"{name}.csv"
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
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class TensorBoardTracker:
    """Event files under OUT/tracking/tensorboard/SUITE/RECIPE/seedN (point `tensorboard --logdir`
    at OUT/tracking/tensorboard: one suite is one experiment, a recipe's seeds side by side)."""

    def __init__(self, root: Path, name: str, resume_step: int, hyperparameters: Mapping[str, object]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch's writer needs the tensorboard package
            raise UserError("report_to 'tensorboard' needs the tensorboard extra: pip install 'mtlbench[tensorboard]'") \
                from error
        self.writer = SummaryWriter(log_dir=str(root / "tensorboard" / name),
                                    purge_step=resume_step + 1 if resume_step else None)
        if not resume_step:
            self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in hyperparameters.items()), 0)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Trackers:
    """The run's trackers, one `log` for all (none: nothing is done, nothing is read from the device)."""

    def __init__(self, names: list[str], out_dir: Path, run_name: str, resume_step: int = 0,
                 hyperparameters: Mapping[str, object] | None = None):
        root = out_dir / "tracking"
        made = {"csv": lambda: CsvTracker(root, run_name, resume_step),
                "tensorboard": lambda: TensorBoardTracker(root, run_name, resume_step, hyperparameters or {})}
        self.trackers = [made[name]() for name in names]

    def __bool__(self) -> bool:
        return bool(self.trackers)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        finite = {name: float(value) for name, value in scalars.items() if value is not None}
        for tracker in self.trackers:
            tracker.log(step, finite)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


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
