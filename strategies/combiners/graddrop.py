"""GradDrop: Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov (2020), "Just Pick a Sign:
Optimizing Deep Multitask Models with Gradient Sign Dropout", NeurIPS (Algorithm 1).

At every coordinate, the gradient sign purity

    P = 1/2 (1 + sum_i g_i / sum_i |g_i|)

is the probability of keeping the positive signs: with one uniform draw U per coordinate, task i's
gradient survives there if (P > U and g_i > 0) or (P < U and g_i < 0). The update is
sum_i (leak + (1 - leak) M_i) g_i, so each coordinate moves with one sign, chosen in proportion
to how much of the tasks' gradient mass has it.

Where the paper puts the GradDrop layer on a shared activation (marginalising over the batch),
our tasks each have their own batch, so no activation is shared between them. It is applied here to
the shared *parameters'* gradient coordinates, which every task's gradient does share (each already
summed over its batch). P is a ratio, so the update scales with the gradients; a coordinate where
every task's gradient is zero keeps P = 1/2 and contributes nothing. This is not a weighting: the
record keeps, per task, the fraction of its gradient coordinates that survived.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mtlbench.strategies.gradients import TRAJECTORY_EVERY, GradientCombiner, StepInfo, WindowMeans
from mtlbench.strategies.registry import register
from torch import Tensor


def graddrop(gradients: Tensor, uniform: Tensor, leak: float = 0.0) -> tuple[Tensor, Tensor]:
    """The GradDrop update (n-vector) and the T x n keep mask, given one uniform draw per coordinate."""
    total, mass = gradients.sum(0), gradients.abs().sum(0)
    purity = 0.5 * (1.0 + torch.where(mass > 0, total / torch.where(mass > 0, mass, 1.0), 0.0))
    keep = ((purity > uniform) & (gradients > 0)) | ((purity < uniform) & (gradients < 0))
    return ((leak + (1.0 - leak) * keep.to(gradients.dtype)) * gradients).sum(0), keep


@register("combiner", "graddrop")
class GradDrop(GradientCombiner):
    """GradDrop (Chen et al., 2020): per coordinate, keep one gradient sign, drawn by its purity."""

    @dataclass
    class Options:
        leak: float = 0.0  # fraction of each task's gradient that always passes (the paper's l_i)

        def __post_init__(self):
            if not 0.0 <= self.leak <= 1.0:
                raise ValueError(f"leak must be in [0, 1], got {self.leak}")

    def __init__(self, options, tasks, generator):
        super().__init__(options, tasks, generator)
        self.kept = WindowMeans(self.tasks, TRAJECTORY_EVERY)
        self._device_generator = None

    def _uniform(self, size: int, like: Tensor) -> Tensor:
        """One uniform draw per coordinate, made where the gradients are (no host round trip)."""
        if like.device.type == "cpu":
            return torch.rand(size, generator=self.generator, dtype=like.dtype)
        if self._device_generator is None:  # seeded from the run's generator: reproducible
            seed = int(torch.randint(2**62, (1,), generator=self.generator))
            self._device_generator = torch.Generator(like.device).manual_seed(seed)
        return torch.rand(size, generator=self._device_generator, device=like.device, dtype=like.dtype)

    def aggregate(self, gradients, gramian, step: StepInfo):
        update, keep = graddrop(gradients, self._uniform(gradients.shape[1], gradients), self.options.leak)
        nonzero = (gradients != 0).sum(1).clamp_min(1)
        self.kept.add(dict(zip(step.tasks, ((keep & (gradients != 0)).sum(1) / nonzero).tolist())))
        return update, None

    def summary(self):
        summary = super().summary()
        if summary:
            summary["mean_kept_fraction"] = self.kept.means()
            summary["kept_fraction_trajectory"] = self.kept.as_dict()
        return summary
