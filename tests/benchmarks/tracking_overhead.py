"""Paired cost of live tracking: the harness's own training loop (tiny encoder, three tasks, PCGrad,
so task weights and cosines are logged too) with `log_every = 1`, each tracker against logging off:

    python tests/benchmarks/tracking_overhead.py --rounds 40 --out results/tracking-overhead/tiny.json

One loop in one process; every round trains one block (3 epochs of the tiny suite's steps) with
each variant in turn, the order rotating by round, so a busy machine slows a round's blocks alike.
Each ratio is taken within a round (block time / the round's `off` block) and reported as the
median over rounds with its interquartile range, for wall time and for this process's CPU time
(W&B's and MLflow's writers are processes of their own: only the wall ratio sees them, and only
when they compete for a core). `off again` is a second logging-off block: its ratio is the
measurement's noise floor, which on a shared machine is wider than the costs measured. So the
in-line cost is also measured directly: the time the step spends in the logging call (reading the
scalars, the record's series, a queue put) over the block's time, and the CPU time of the thread
that writes to the trackers (`Trackers`) over the block's time; per block, median and IQR over rounds. With logging off the loop's cost is one test per step (`if self.trackers and ...`),
also timed here on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mtlbench.bench.config import load_suite
from mtlbench.bench.context import SuiteContext
from mtlbench.bench.files import write_json_atomic
from mtlbench.bench.tracking import TrackedRun, Trackers
from mtlbench.bench.trainer import TrainingLoop

from tests.conftest import write_suite

VARIANTS = ("off", "off again", "csv", "tensorboard", "mlflow", "wandb", "all four")


def make_loop(folder: Path) -> TrainingLoop:
    suite_file = write_suite(folder / "overhead.toml", '[[recipes]]\nname = "pcgrad"\nsampler = "joint"\n'
                             'combiner = "pcgrad"\n', train="epochs = 1000\nbatch_size = 16\nlr = 2e-3", name="overhead")
    suite = load_suite(str(suite_file))
    context = SuiteContext(suite, folder / "out", log=lambda *_: None, progress=False)
    recipe = suite.recipes[0]
    train = suite.train_for(recipe)
    torch.set_num_threads(train.threads)
    return TrainingLoop(context.build(recipe, 0), train, context.device, log_every=1)


def make_trackers(folder: Path) -> dict[str, Trackers | None]:
    os.environ.setdefault("WANDB_MODE", "offline")
    out = folder / "out"
    made = {"off": None, "off again": None}
    for name in ("csv", "tensorboard", "mlflow", "wandb"):
        made[name] = Trackers([name], out, TrackedRun("overhead", name, 0), 0, {"config/x": 1})
    made["all four"] = Trackers(["csv", "tensorboard", "mlflow", "wandb"], out, TrackedRun("overhead", "all", 0), 0, {})
    return made


def measure(rounds: int, folder: Path, block_epochs: int) -> dict:
    loop, trackers = make_loop(folder), make_trackers(folder)
    loop.parts.model.train()
    times = {name: [] for name in VARIANTS}
    inline = {name: [] for name in VARIANTS}
    logging_seconds = [0.0]
    log_step = loop._log_step

    def timed_log_step(task_losses):
        started = time.perf_counter()
        log_step(task_losses)
        logging_seconds[0] += time.perf_counter() - started
    loop._log_step = timed_log_step
    epoch = 0
    for round_index in range(rounds + 2):  # the first two rounds warm up and are dropped
        shift = round_index % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            loop.trackers, logging_seconds[0] = trackers[name], 0.0
            writer_clock = time.pthread_getcpuclockid(trackers[name].thread.ident) if trackers[name] else None
            writer_cpu = time.clock_gettime(writer_clock) if writer_clock is not None else 0.0
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(block_epochs):
                epoch += 1
                loop._train_epoch(epoch)
            if trackers[name]:
                trackers[name].flush()  # what the block logged, written: the thread's CPU for it is counted
            if round_index >= 2:
                times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                thread_cpu = time.clock_gettime(writer_clock) - writer_cpu if writer_clock is not None else 0.0
                inline[name].append((logging_seconds[0] / times[name][-1][0], thread_cpu / times[name][-1][0]))
    for made in trackers.values():
        if made:
            made.finish(loop.state.step, {})
            made.close()
    return summarise(times, inline, loop.steps_per_epoch * block_epochs, loop)


def _quartiles(values: list[float]) -> dict:
    quartiles = statistics.quantiles(values, n=4)
    return {"median": statistics.median(values), "q1": quartiles[0], "q3": quartiles[2]}


def summarise(times: dict[str, list], inline: dict[str, list], steps: int, loop: TrainingLoop) -> dict:
    result = {}
    for name, blocks in times.items():
        result[name] = {"inline_fraction": _quartiles([i for i, _ in inline[name]]),
                        "writer_thread_cpu_fraction": _quartiles([t for _, t in inline[name]])}
        for which, index in (("wall", 0), ("cpu", 1)):
            result[name][which] = _quartiles([b[index] / o[index] for b, o in zip(blocks, times["off"])])
        result[name]["step_ms_median"] = statistics.median(b[0] for b in blocks) / steps * 1000
    guard = timeit.Timer("loop.trackers and loop.state.step % loop.log_every == 0",
                         globals={"loop": loop}).timeit(200_000) / 200_000
    return {"steps_per_block": steps, "rounds": len(times["off"]), "variants": result,
            "off_guard_ns": guard * 1e9, "off_guard_fraction": guard / (result["off"]["step_ms_median"] / 1000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--block-epochs", type=int, default=3, help="epochs of the tiny suite in one block")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        result = measure(args.rounds, Path(folder), args.block_epochs)
    result["machine"] = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                         "torch": torch.__version__, "threads": torch.get_num_threads()}
    for name, row in result["variants"].items():
        print(f"{name:>12}: wall x{row['wall']['median']:.3f} [{row['wall']['q1']:.3f}, {row['wall']['q3']:.3f}]  "
              f"cpu x{row['cpu']['median']:.3f} [{row['cpu']['q1']:.3f}, {row['cpu']['q3']:.3f}]  "
              f"in-line {100 * row['inline_fraction']['median']:.2f} % [{100 * row['inline_fraction']['q1']:.2f}, "
              f"{100 * row['inline_fraction']['q3']:.2f}]  writer thread {100 * row['writer_thread_cpu_fraction']['median']:.2f} % "
              f"[{100 * row['writer_thread_cpu_fraction']['q1']:.2f}, {100 * row['writer_thread_cpu_fraction']['q3']:.2f}]"
              f"  step {row['step_ms_median']:.2f} ms")
    print(f"logging off: {result['off_guard_ns']:.0f} ns a step ({100 * result['off_guard_fraction']:.4f} % of a step)")
    if args.out:
        write_json_atomic(args.out, result)
        print(json.dumps({"written": str(args.out)}))


if __name__ == "__main__":
    main()
