"""The MLflow writer process of a tracked run (bench.tracking.MlflowTracker): reads one JSON line a
logged step from stdin, `[step, milliseconds, {name: value}]`, and writes them in batches; the line
"flush" writes what is pending now. Ends at the end of its input (the run closed it, or died).

    python -m mtlbench.bench.mlflow_writer TRACKING_URI RUN_ID

MLflow's SQLite store spends ~0.1 ms of CPU a metric; out of the training process that costs the
training nothing on a machine with a core to spare (tests/benchmarks/tracking_overhead.py)."""

from __future__ import annotations

import json
import re
import sys
import time

BATCH = 1000  # MLflow takes at most 1000 metrics a batch
MLFLOW_NAME = re.compile(r"[^\w\-. :/]")  # what MLflow refuses in a name ("|" of a task pair becomes ":")


def main(uri: str, run_id: str) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client, pending, written = MlflowClient(tracking_uri=uri), [], time.monotonic()

    def write():
        for start in range(0, len(pending), BATCH):
            client.log_batch(run_id, metrics=pending[start:start + BATCH])
        pending.clear()

    for line in sys.stdin:
        if line.strip() != "flush":
            step, stamp, scalars = json.loads(line)
            pending.extend(Metric(MLFLOW_NAME.sub(":", name), value, stamp, step) for name, value in scalars.items())
        if line.strip() == "flush" or len(pending) >= BATCH or time.monotonic() - written > 1.0:
            write()
            written = time.monotonic()
    write()


if __name__ == "__main__":
    main(*sys.argv[1:3])
