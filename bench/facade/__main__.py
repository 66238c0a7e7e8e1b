"""`python -m mtlbench ...` is the mtlbench command (what torchrun launches: `-m mtlbench run SUITE`)."""

import sys

from mtlbench.bench.cli import main

sys.exit(main())
