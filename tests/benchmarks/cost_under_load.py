"""The table's `cost x` (bench.cost, bench.paired_rounds) quiet and under a planted load, in one
process: each recipe's paired cost against joint_sum (joint_sum against itself: the self-check),
first with the machine as it is, then with `--load` spinning processes beside it (bounded: they
stop by themselves after `--load-seconds`, and are killed when this ends):

    python tests/benchmarks/cost_under_load.py --load 2 --out results/cost-under-load/tiny.json
    python tests/benchmarks/cost_under_load.py --render results/cost-under-load

Both clocks are reported from the same rounds: the judged one (CPU time on CPU) and the wall clock.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

SUITE = """name = "cost-under-load"
tasks = ["sst", "quora", "sts"]
data = "synthetic"
model = "tiny"
baseline = "joint_sum"
[train]
batch_size = 32
threads = 1
device = "cpu"
[synthetic]
sst_train = 512
quora_train = 512
sts_train = 512
[defaults]
sampler = "joint"
pooling = "mean"
pair_head = "concat_product"
[[recipes]]
name = "joint_sum"
[[recipes]]
name = "joint_pcgrad"
combiner = { name = "pcgrad", reduction = "sum" }
[[recipes]]
name = "joint_mgda"
combiner = { name = "mgda", normalization = "l2", apply_to = "raw" }
[[recipes]]
name = "joint_fgm"
regularizers = [{ name = "fgm", epsilon = 0.01 }]
[[recipes]]
name = "joint_contrastive"
regularizers = ["contrastive"]
"""


def _spin(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def measure(context, label: str) -> dict:
    from mtlbench.bench.cost import paired_step_cost

    found = {}
    for recipe in context.suite.recipes:
        cost = paired_step_cost(context, recipe, 0)
        row = {key: cost.get(key) for key in ("ratio", "ratio_ci", "self_ratio", "self_ratio_ci", "rounds", "precise",
                                              "wall_ratio", "wall_ratio_ci", "clock")}
        found[recipe.name] = row
        shown = cost.get("self_ratio", cost["ratio"])
        print(f"{label:7s} {recipe.name:18s} {shown:.3f} {cost.get('self_ratio_ci') or cost['ratio_ci']} "
              f"rounds {cost['rounds']} precise {cost['precise']}  wall {cost['wall_ratio']:.3f} "
              f"{cost['wall_ratio_ci']}", flush=True)
    return found


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load", type=int, default=2, help="spinning processes for the loaded half")
    parser.add_argument("--load-seconds", type=float, default=900.0, help="the spinners stop by themselves then")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", type=Path, help="print the tables of the measurements in this folder and stop")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return {}
    from mtlbench.bench.config import load_suite
    from mtlbench.bench.context import SuiteContext

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cost-under-load.toml"
        path.write_text(SUITE)
        context = SuiteContext(load_suite(str(path)), Path(folder) / "out", log=lambda message: None, progress=False)
        context.prepared  # noqa: B018 - data and encoder before any timing
        found = {"load_before": os.getloadavg(), "quiet": measure(context, "quiet")}
        spinners = [multiprocessing.Process(target=_spin, args=(args.load_seconds,), daemon=True)
                    for _ in range(args.load)]
        for spinner in spinners:
            spinner.start()
        try:
            time.sleep(2)  # the spinners at full speed
            found["loaded"] = measure(context, f"load+{args.load}")
            found["load_during"] = os.getloadavg()
        finally:
            for spinner in spinners:
                spinner.kill()
    import torch

    found.update({"spinners": args.load, "cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                  "torch": torch.__version__})
    if args.out:
        from mtlbench.bench.records import write_json_atomic

        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, found)
    return found


def render(folder: Path) -> str:
    from tests.benchmarks.measurements import measurements

    parts = []
    for name, found in measurements(folder):
        parts.append(f"`{name}`: {found['cpus']} CPUs ({found['cpu']}), torch {found['torch']}; load average "
                     f"before {found['load_before'][0]:.1f}, during the loaded half {found['load_during'][0]:.1f} "
                     f"with {found['spinners']} spinning processes planted\n")
        parts.append("| recipe | quiet: cost x [95 %] | rounds | loaded: cost x [95 %] | rounds | change | "
                     "wall clock quiet | wall clock loaded |")
        parts.append("|---|---|---:|---|---:|---:|---|---|")
        for recipe, quiet in found["quiet"].items():
            loaded = found["loaded"][recipe]
            parts.append(f"| {recipe}{' (self)' if quiet.get('self_ratio') else ''} | {_ratio(quiet)} | {quiet['rounds']} "
                         f"| {_ratio(loaded)} | {loaded['rounds']} | {_change(quiet, loaded)} | "
                         f"{_ratio(quiet, 'wall_')} | {_ratio(loaded, 'wall_')} |")
        parts.append("")
    return "\n".join(parts)


def _value(row: dict, prefix: str = "") -> tuple[float, list | None]:
    if not prefix and row.get("self_ratio") is not None:
        return row["self_ratio"], row["self_ratio_ci"]
    return row[f"{prefix}ratio"], row[f"{prefix}ratio_ci"]


def _ratio(row: dict, prefix: str = "") -> str:
    value, interval = _value(row, prefix)
    text = f"{value:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")
    return text + ("" if prefix or row["precise"] else " ?")


def _change(quiet: dict, loaded: dict) -> str:
    return f"{(_value(loaded)[0] / _value(quiet)[0] - 1) * 100:+.1f} %"


if __name__ == "__main__":
    main()
