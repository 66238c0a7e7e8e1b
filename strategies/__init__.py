"""Strategy plugins: samplers, combiners, regularizers, freezing schedules.

The default recipe lives here, not in the harness, so the trainer never names a strategy.
"""

DEFAULT_RECIPE = {
    "sampler": "round_robin",
    "combiner": "sum",
    "regularizers": [],
    "freezing": "none",
}
