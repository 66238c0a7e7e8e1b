"""Installed as the `mtlbench` package (pyproject: package-dir): `import mtlbench`. Its names are
mtlbench.bench.api's, imported on first use: `mtlbench.bench.cli` and the other subpackages are
imported through this package, and a typo on the command line must not wait for torch."""

__all__ = ["RunRecord", "StrategyStep", "Suite", "TaskInputs", "UserError", "check", "load_baseline", "load_records",
           "load_suite", "make_baseline", "markdown", "register", "run", "table", "tune", "verdict"]


def __getattr__(name: str):
    if name in __all__ or name == "MultiTaskTrainer":  # MultiTaskTrainer: docs/hf_trainer.md
        from mtlbench.bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'mtlbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__ + ["MultiTaskTrainer"])
