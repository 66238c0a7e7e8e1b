"""The combiner benchmark's paired step cost of PCGrad and FGM against the summed loss (tiny encoder,
1 thread, `tests/benchmarks/test_step_cost.py`'s paired rounds: the table's estimator), for the source
tree TREE (one with bench/paired_rounds.py):

    python tests/tools/paired_step_cost.py TREE [ROUNDS]   (with TREE installed: pip install -e TREE)

Run it on two checkouts alternately to compare them (ratios hold across runs; absolute times do
not). Prints one JSON line: each ratio's median over rounds and its 95 % interval."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys

import torch


def main(tree: str, rounds: int = 30) -> dict:
    spec = importlib.util.spec_from_file_location("step_cost", os.path.join(tree, "tests/benchmarks/test_step_cost.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from mtlbench import bench

    if not bench.__file__.startswith(os.path.abspath(tree)):
        raise SystemExit(f"bench comes from {bench.__file__}, not {tree}: install that tree: pip install -e {tree}")
    torch.set_num_threads(1)
    variants = {"sum": {}, "pcgrad": {"combiner": "pcgrad"}, "fgm": {"regularizers": (("fgm", {}),)}}
    result = module.paired_step_costs(variants, rounds=rounds)
    found = {"tree": tree, "rounds": result.rounds, "sum_ms": statistics.median(result.seconds["sum"]) * 1000}
    for name in ("pcgrad", "fgm"):
        summary = result.summary(name)
        found[name] = {"median": summary["ratio"], "ci": summary["ratio_ci"], "precise": summary["precise"]}
    return found


if __name__ == "__main__":
    print(json.dumps(main(os.path.abspath(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 30)))
