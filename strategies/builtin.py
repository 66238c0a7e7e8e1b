"""Imports every in-tree strategy module so their @register decorators run."""

from strategies.combiners import sum as _sum, weighted  # noqa: F401
from strategies.freezing import none  # noqa: F401
from strategies.samplers import joint, proportional, round_robin, temperature, uniform  # noqa: F401
