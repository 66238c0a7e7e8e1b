"""No freezing: every parameter trains for the whole run (standard full fine-tuning,
Devlin et al., 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from mtlbench.strategies.base import FreezingSchedule
from mtlbench.strategies.registry import register


@register("freezing", "none")
class NoFreezing(FreezingSchedule):
    """Full fine-tuning: every parameter trains throughout."""

    @dataclass
    class Options:
        pass
