"""The combiner benchmark's paired step cost of PCGrad and FGM against the summed loss (tiny encoder,
1 thread, `tests/benchmarks/test_step_cost.py`'s interleaved blocks), for the source tree TREE:

    python tests/tools/paired_step_cost.py TREE [ROUNDS]   (with TREE installed: pip install -e TREE)

Run it on two checkouts alternately to compare them (ratios hold across runs; absolute times do
not). Prints one JSON line: each ratio's median over rounds and its interquartile range."""

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
    blocks = module.interleaved_step_times(variants, rounds=rounds)
    found = {"tree": tree, "rounds": rounds, "sum_ms": statistics.median(blocks["sum"])}
    for name in ("pcgrad", "fgm"):
        ratios = [mine / base for mine, base in zip(blocks[name], blocks["sum"])]
        low, _, high = statistics.quantiles(ratios, n=4)
        found[name] = {"median": statistics.median(ratios), "iqr": [low, high]}
    return found


if __name__ == "__main__":
    print(json.dumps(main(os.path.abspath(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 30)))
