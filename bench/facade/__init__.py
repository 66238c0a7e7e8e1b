"""Installed as the `mtlbench` package (pyproject: package-dir): `import mtlbench`. Only names
from mtlbench.bench.api, so importing this folder as `bench.facade` too gives the same objects."""

from mtlbench.bench.api import *
from mtlbench.bench.api import (
    __all__,  # noqa: F401
    __getattr__,  # noqa: F401 -- mtlbench.MultiTaskTrainer, imported when first used
)
