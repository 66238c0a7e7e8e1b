"""Mixed precision and the per-step gradient pipeline (the trainer's side of
strategies.base.GradientPipeline).

- fp32: nothing changes.
- bf16: forwards under `torch.autocast(dtype=bfloat16)`; bf16 has fp32's range, so no loss scale.
- fp16: forwards under autocast with float16, and a dynamic loss scale S: each task's loss is
  multiplied by S before any backward, so small gradients survive float16; per-task gradients are
  divided by S *before* a combiner forms its Gramian (`per_task`), `.grad` after a plain backward.
  A step whose gradients hold inf/NaN is skipped (no update) and counted, and S halves; after
  `growth_interval` good steps in a row S doubles (torch.amp.GradScaler's defaults and rule).

Why not torch.amp.GradScaler itself: it unscales the `.grad` of an optimizer's parameters and
skips only on infs it found there, while a per-task combiner needs each task's gradients unscaled
before `.grad` exists; the scale's bookkeeping is the few lines of `DynamicLossScale`. Why not
accelerate: its `backward()` wraps one loss, and the step contract has T losses whose gradients the
combiner takes itself; autocast and a scale are all mixed precision needs here.

Model weights, optimizer state and gradients stay float32 in every mode.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from mtlbench.bench.parallel import SINGLE, Ranks
from mtlbench.bench.settings import PRECISIONS
from mtlbench.strategies.base import GradientPipeline
from torch import Tensor

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class SkippedStep(Exception):
    """fp16: the step's gradients overflowed; no update is made."""


@dataclass
class DynamicLossScale:
    """The fp16 loss scale: halves on an overflow, doubles after `growth_interval` clean steps."""

    scale: float = 2.0 ** 16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    clean_steps: int = 0

    def update(self, overflowed: bool) -> None:
        if overflowed:
            self.scale *= self.backoff_factor
            self.clean_steps = 0
        else:
            self.clean_steps += 1
            if self.clean_steps == self.growth_interval:
                self.scale *= self.growth_factor
                self.clean_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, saved: dict) -> None:
        self.scale, self.clean_steps = float(saved["scale"]), int(saved["clean_steps"])


# Below this scale, an overflow is not float16 range but a diverging run.
MIN_LOSS_SCALE = 1.0


class StepPipeline(GradientPipeline):
    """One run's precision and ranks. Per step: `begin` with each task's share of the batch; the
    trainer multiplies each task's loss by `multiplier(task)`; gradients come back through
    `per_task` (a per-task combiner) or `reduce_grads` (after a plain backward)."""

    grad_norm: torch.Tensor | None = None  # the last step's gradient norm (before clipping), on the device

    def __init__(self, precision: str = "fp32", device: torch.device | None = None, ranks: Ranks = SINGLE):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision, self.ranks = precision, ranks
        self.device_type = (device or torch.device("cpu")).type
        self.dtype = AUTOCAST_DTYPES.get(precision)
        self.compute_eps = torch.finfo(self.dtype).eps if self.dtype else 0.0
        self.scaler = DynamicLossScale() if precision == "fp16" else None
        self.skipped_steps = 0
        self.shares: dict[str, float] = {}
        self.values: dict[str, Tensor] | None = None
        self.reduced = False

    # --- the step ----------------------------------------------------------------------------
    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def loss_scale(self) -> float:
        return self.scaler.scale if self.scaler else 1.0

    def begin(self, shares: Mapping[str, float]) -> None:
        self.shares, self.values, self.reduced = dict(shares), None, False

    def multiplier(self, task: str) -> float:
        """What this rank's loss of `task` is multiplied by before any backward."""
        return self.loss_scale() * self.ranks.world * self.shares.get(task, 1.0)

    def global_values(self, local: Mapping[str, Tensor], keep: bool = True) -> dict[str, Tensor]:
        """The tasks' losses over the whole batch from each rank's shard means (one collective);
        with `keep`, this step's values for `loss_values`."""
        tasks = list(local)
        if not self.ranks.active:
            values = {t: local[t].detach() for t in tasks}
        else:
            stacked = torch.stack([local[t].detach().float() * self.shares.get(t, 1.0) for t in tasks])
            values = dict(zip(tasks, self.ranks.sum_(stacked).unbind()))
        if keep:
            self.values = values
        return values

    def loss_values(self, losses):
        if self.values is not None:
            return {task: self.values[task] for task in losses}
        return {task: loss.detach() / self.loss_scale() for task, loss in losses.items()}

    def _unscale_and_average(self, tensors: list[Tensor]) -> None:
        """Divide by the loss scale and the world size, then sum over the ranks: one collective over
        all tensors (flattened into one buffer when there are several)."""
        tensors = [t for t in tensors if t is not None and t.numel()]
        if not tensors:
            return
        factor = 1.0 / (self.loss_scale() * self.ranks.world)
        if factor != 1.0:
            torch._foreach_mul_(tensors, factor)
        if self.ranks.active:
            if len(tensors) == 1:
                self.ranks.sum_(tensors[0])
            else:
                flat = torch.cat([t.reshape(-1) for t in tensors])
                self.ranks.sum_(flat)
                for tensor, piece in zip(tensors, flat.split([t.numel() for t in tensors])):
                    tensor.copy_(piece.view_as(tensor))

    def per_task(self, matrix, heads):
        head_grads = [g for grads in heads.values() for g in grads if g is not None]
        self._unscale_and_average([matrix, *head_grads] if matrix.numel() else head_grads)
        self.reduced = True
        if self.scaler is not None and not all_finite([matrix, *head_grads]):
            raise SkippedStep
        return matrix, heads

    @property
    def changes_gradients(self) -> bool:
        """Whether gradients need unscaling or averaging at all (not in fp32 or bf16 on one process)."""
        return self.scaler is not None or self.ranks.active

    def reduce_grads(self, parameters: list[torch.nn.Parameter]) -> None:
        """After a combiner's plain backward: unscale and average `.grad` (unless `per_task` did)."""
        if not self.reduced:
            self._unscale_and_average([p.grad for p in parameters if p.grad is not None])
            self.reduced = True

    def overflowed(self, finite: bool) -> bool:
        """After the step's gradients are final: whether to skip it (fp16 only). Updates the scale."""
        if self.scaler is None:
            return False
        self.scaler.update(not finite)
        if not finite:
            self.skipped_steps += 1
        return not finite

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict() if self.scaler else None, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, saved: dict) -> None:
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        self.skipped_steps = int(saved.get("skipped_steps", 0))

    def summary(self) -> dict:
        summary = {"precision": self.precision, "processes": self.ranks.world}
        if self.scaler is not None:
            summary.update(skipped_steps=self.skipped_steps, loss_scale=self.scaler.scale)
        return summary


def all_finite(tensors: list[Tensor]) -> bool:
    """One device read for all tensors."""
    present = [t for t in tensors if t is not None and t.numel()]
    if not present:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in present]).all())


class StepTimer:
    """Per-step times. On CUDA, a pair of events per step, read once per epoch (`drain`): no device
    synchronisation after every step. Elsewhere, the wall clock."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pending: list[tuple] = []
        self.seconds: list[float] = []

    def start(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pending.append((started, end))
        else:
            self.seconds.append(time.perf_counter() - started)

    def drain(self) -> list[float]:
        """Every step time so far (CUDA: waits for the last recorded event)."""
        if self.pending:
            self.pending[-1][1].synchronize()
            self.seconds.extend(start.elapsed_time(end) / 1000 for start, end in self.pending)
            self.pending = []
        return self.seconds
