"""A combiner for the interrupt tests, found by worker processes through an entry point that the
test writes (tests/bench/test_interrupt.py): the summed loss, except that with MTLBENCH_TEST_BLOCK
set, the first step of each run prints `blocked PID` (also into the FIFO MTLBENCH_TEST_BLOCK_NOTIFY
names, if set) and waits until the file that variable names
exists (in the tests: never). With MTLBENCH_TEST_BLOCK_UNINTERRUPTIBLE=1 it ignores SIGTERM
meanwhile, as a native op that never returns to Python would: only a kill stops it."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from mtlbench.strategies.combiners.sum import SumCombiner
from mtlbench.strategies.registry import register


@register("combiner", "blocking_sum")
class BlockingSum(SumCombiner):
    """The summed loss, whose first step blocks while MTLBENCH_TEST_BLOCK names a missing file."""

    def backward(self, losses, shared, task_specific, pipeline):
        release = os.environ.get("MTLBENCH_TEST_BLOCK")
        if release and not getattr(self, "blocked", False):
            self.blocked = True
            if os.environ.get("MTLBENCH_TEST_BLOCK_UNINTERRUPTIBLE") == "1":  # (a mask would hold it back in
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # this thread only; torch's threads would take it)
            print(f"blocked {os.getpid()}", file=sys.stderr, flush=True)
            if os.environ.get("MTLBENCH_TEST_BLOCK_NOTIFY"):  # a FIFO the test reads (Ray keeps workers' stderr)
                with open(os.environ["MTLBENCH_TEST_BLOCK_NOTIFY"], "w") as fifo:
                    fifo.write(f"blocked {os.getpid()}\n")
            while not Path(release).exists():
                time.sleep(0.05)  # a wait for the test, not a measurement
        super().backward(losses, shared, task_specific, pipeline)
