"""The settings sections of a suite ([train], [cost], [check], [checkpoints]) as typed, frozen
dataclasses: read through tasks.typed.from_table (types, unknown keys), then each checks its own
ranges in `__post_init__`, so a bad value fails when the suite is read, not after training."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

PRECISIONS = ("fp32", "bf16", "fp16")  # the autocast dtype of the forwards (bench.precision)
MAX_SEEDS = 10_000  # runs per recipe; a count past it is refused before its list is made
MAX_SEED = 2**32 - 1  # numpy's seeds end there
TINY = "tiny"  # the embedded encoder's name (bench.backbone builds it)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 3
    batch_size: int = 32
    eval_batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    max_length: int = 128
    dropout: float = 0.1
    single_head: str = "linear"
    device: str = "auto"
    # Intra-op CPU threads per run. Part of the setting: the float results of a run depend on it
    # (measured: 30 steps with 1 vs 2 threads end 0.1 apart in some weight), so it is fixed, not
    # derived from the core count, and several runs go side by side instead (`--jobs`).
    threads: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16: autocast dtype of the forwards (bench.precision)

    def __post_init__(self):
        """Ranges, so that a bad value fails when the suite is read, not after training."""
        for name in ("epochs", "batch_size", "eval_batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.threads > 1024:
            raise ValueError(f"threads must be at most 1024, got {self.threads}")
        for name in ("lr", "weight_decay", "warmup_ratio", "max_grad_norm", "dropout"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0 (max_grad_norm 0: no clipping)")
        if not 0 <= self.warmup_ratio <= 1:
            raise ValueError(f"warmup_ratio is a fraction of the steps, from 0 to 1; got {self.warmup_ratio}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        if self.device != "auto":
            import torch  # here, so that reading the settings (the gate, the tables) stays light

            try:
                device = torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', "
                                 f"got {self.device!r}") from None
            if device.type not in ("cpu", "cuda", "mps"):
                raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r}")


@dataclass(frozen=True)
class CostSettings:
    """The paired step-cost measurement after each run (bench.cost, bench.paired_rounds): rounds
    of one block of this recipe's steps and one of the baseline recipe's on the same batches, until
    the median ratio's 95 % interval is within ±`target` (relative), at least `min_rounds` (6: the
    fewest with a 95 % interval) and at most `rounds`; a block holds `block_batches` task batches
    (a joint step over 3 tasks holds 3), repeated until the baseline's block lasts about
    `block_seconds` (0: one pass). `clock`: "auto" (CPU time on CPU, synchronised wall time on
    CUDA) or "wall"."""

    rounds: int = 40
    min_rounds: int = 6
    target: float = 0.03
    block_batches: int = 9
    block_seconds: float = 0.1
    clock: str = "auto"
    enabled: bool = True

    def __post_init__(self):
        if self.rounds < 1 or self.block_batches < 1 or self.min_rounds < 1:
            raise ValueError("rounds, min_rounds and block_batches must be at least 1")
        if not 0 <= self.block_seconds <= 60:
            raise ValueError(f"block_seconds must be from 0 to 60, got {self.block_seconds}")
        if not 0 < self.target < 1:
            raise ValueError(f"target is a relative half-width, between 0 and 1; got {self.target}")
        if self.clock not in ("auto", "wall"):
            raise ValueError(f"clock must be 'auto' or 'wall', got {self.clock!r}")


@dataclass(frozen=True)
class CheckTolerances:
    """When `mtlbench check` fails a value (bench.gate): a primary metric's mean falls by more than
    its margin, max(metric_tolerance, std_factor x the standard error of the change: over the seeds
    both hold, paired seed by seed); a margin above `must_detect` fails closed (the gate could not
    see a drop that size); a paired cost ratio rises by more than cost_tolerance (relative)."""

    metric_tolerance: float = 0.02
    std_factor: float = 3.0
    must_detect: float = 0.05
    cost_tolerance: float = 0.10

    def __post_init__(self):
        if self.must_detect < self.metric_tolerance:
            raise ValueError(f"must_detect ({self.must_detect}) is below metric_tolerance ({self.metric_tolerance}): "
                             "no drop could both pass and be caught")


@dataclass(frozen=True)
class CheckSettings:
    tolerances: CheckTolerances = field(default_factory=CheckTolerances)
    tasks: dict[str, CheckTolerances] = field(default_factory=dict)  # per-task overrides
    allow_missing: bool = False  # a recipe, task or seed of the baseline absent from the results

    def for_task(self, task: str) -> CheckTolerances:
        return self.tasks.get(task, self.tolerances)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self.tolerances), "allow_missing": self.allow_missing,
                "tasks": {t: dataclasses.asdict(v) for t, v in self.tasks.items()}}


@dataclass(frozen=True)
class CheckpointSettings:
    """`[checkpoints]` of a suite: save at the end of every epoch; keep the last `keep` epochs, plus
    each task's best dev epoch when `keep_best` (default: when the suite scores test = true)."""

    enabled: bool = True
    keep: int = 1
    keep_best: bool | None = None

    def __post_init__(self):
        if self.keep < 0 or not isinstance(self.keep_best, (bool, type(None))):
            raise ValueError("keep must be >= 0 and keep_best true or false")


# What a recipe may set for itself (`[[recipes]] train = {...}`) and what `mtlbench tune` searches:
# the optimisation settings of one run, not the data's shape (max_length) or where it runs.
RECIPE_TRAIN_KEYS = ("lr", "weight_decay", "warmup_ratio", "dropout", "max_grad_norm", "epochs", "batch_size")
TUNABLE_TRAIN_KEYS = ("lr", "weight_decay", "warmup_ratio", "dropout", "max_grad_norm")


@dataclass(frozen=True)
class SearchRange:
    """One dimension of the search: a number from `low` to `high` (log-uniform with `log`); an
    integer option of a strategy is searched over the integers in the range."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got low = {self.low}, high = {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TuneSettings:
    """`[tune]` of a suite (bench.tuning): `trials` per recipe, the baseline's as many as any
    other's; TPE from `seed` (the same for every recipe: each starts from the same random points);
    the median pruner on the per-epoch validation score after `startup_trials`; the objective on a
    validation split of `tune_fraction` of train (never dev or test). `space`: the [train] settings
    searched, e.g. lr = { low = 1e-4, high = 1e-2, log = true }."""

    trials: int = 8
    tune_fraction: float = 0.2
    seed: int = 0
    objective: str = "mean"  # "mean" of the primary metrics, or "delta_m" % against the baseline's defaults
    pruner: str = "median"  # or "none"
    startup_trials: int = 3
    space: dict[str, SearchRange] = field(default_factory=dict)

    def __post_init__(self):
        if self.trials < 1 or self.startup_trials < 0:
            raise ValueError("trials must be at least 1 and startup_trials at least 0")
        if not 0.05 <= self.tune_fraction <= 0.5:
            raise ValueError(f"tune_fraction is the share of train held out, from 0.05 to 0.5; got {self.tune_fraction}")
        if self.objective not in ("mean", "delta_m"):
            raise ValueError(f"objective must be 'mean' or 'delta_m', got {self.objective!r}")
        if self.pruner not in ("median", "none"):
            raise ValueError(f"pruner must be 'median' or 'none', got {self.pruner!r}")

    def as_dict(self) -> dict:
        return {**{k: v for k, v in dataclasses.asdict(self).items() if k != "space"},
                "space": {k: r.as_dict() for k, r in self.space.items()}}


@dataclass(frozen=True)
class FrontSettings:
    """`[front]` of a suite (bench.front): the static-weight sum at every point of a grid on the
    task simplex (weights k/divisions, summing to the number of tasks, so the uniform point is the
    plain sum), each with the suite's seeds and the baseline's settings (its tuned ones after
    `tune`). divisions 0: 6 for two tasks (7 points), 4 for three (15 points), 3 beyond."""

    enabled: bool = True
    divisions: int = 0

    def __post_init__(self):
        if not 0 <= self.divisions <= 12:
            raise ValueError(f"divisions must be from 1 to 12 (0: chosen by the number of tasks), got {self.divisions}")

    def divisions_for(self, tasks: int) -> int:
        return self.divisions or {1: 1, 2: 6, 3: 4}.get(tasks, 3)


TRACKERS = ("csv", "tensorboard", "mlflow", "wandb")  # bench.tracking


@dataclass(frozen=True)
class TrackingSettings:
    """`[tracking]` of a suite: where each run's live scalars go, every `log_every` training steps.
    Off by default: a run's record already keeps its per-epoch history, and a tracker is an extra
    dependency and files that a suite asks for. Not part of a run's identity (turning it on never
    makes a finished run "other settings")."""

    report_to: list[str] = field(default_factory=list)
    log_every: int = 10

    def __post_init__(self):
        unknown = [name for name in self.report_to if name not in TRACKERS]
        if unknown:
            raise ValueError(f"report_to: unknown tracker(s) {', '.join(map(repr, unknown))}; available: "
                             f"{', '.join(TRACKERS)}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be at least 1, got {self.log_every}")
