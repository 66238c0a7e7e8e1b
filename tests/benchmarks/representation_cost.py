"""Paired step cost and peak memory of Gramian combiners with `on = "parameters"` (T backwards
through the encoder, a T x n gradient matrix) against `on = "representation"` (one backward), both
against the summed loss, on the tiny and the BERT-base-shaped encoder:

    python tests/benchmarks/representation_cost.py --size base --batch 4 --length 32 --rounds 9 \
        --out results/representation/cpu-base.json

Every round runs one block of each variant in turn in one process on the same batches (the order
alternating by round), so a busy machine slows a round's blocks alike; each ratio is taken within a
round and reported as the median over rounds with its interquartile range. Peak memory: the torch
profiler's tensor allocations during one step above what was live before it (exact for tensors,
blind to allocator caching; bench's step_peak_tensor_memory).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.model import MultiTaskModel
from bench.precision import StepPipeline
from bench.records import write_json_atomic
from bench.step import Strategies, make_optimizer, training_step
from strategies import registry
from tests.benchmarks.step_vs_loop import SIZES, SPECS, make_batches
from tests.benchmarks.test_step_cost import step_peak_tensor_memory

METHODS = ("pcgrad", "mgda", "cagrad", "nash_mtl")


def variants() -> dict[str, tuple[str, dict]]:
    found = {"sum": ("sum", {})}
    for method in METHODS:
        found[f"{method}/parameters"] = (method, {"on": "parameters"})
        found[f"{method}/representation"] = (method, {"on": "representation"})
    return found


class Stepper:
    def __init__(self, combiner: str, options: dict, config: BertConfig, batches: list[dict]):
        torch.manual_seed(0)
        self.model = MultiTaskModel(BertModel(config, add_pooling_layer=False), list(SPECS), "mean",
                                    "concat_product", dropout=0.0)
        tasks = [spec.name for spec in SPECS]
        freezing = registry.build("freezing", "none", {}, self.model)
        self.strategies = Strategies(None, registry.build("combiner", combiner, options, tasks,
                                                          torch.Generator().manual_seed(0)), [], freezing)
        self.optimizer = make_optimizer(freezing.parameter_groups(1e-5, 0.01))
        self.batches, self.pipeline = batches, StepPipeline("fp32", torch.device("cpu"))

    def step(self, batches) -> None:
        training_step(self.model, self.strategies, batches, self.optimizer, None, 1.0, self.pipeline)

    def block(self) -> float:
        started = time.perf_counter()
        for batches in self.batches:
            self.step(batches)
        return (time.perf_counter() - started) / len(self.batches)


def measure(size: str, batch: int, length: int, rounds: int, steps: int) -> dict:
    config = BertConfig(**SIZES[size], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batches = make_batches(config.vocab_size, batch, length, steps)
    steppers = {name: Stepper(combiner, options, config, batches) for name, (combiner, options) in variants().items()}
    for stepper in steppers.values():  # warm-up: the optimizer's state is allocated at the first step
        stepper.block()
    peaks = {name: step_peak_tensor_memory(lambda s=s: s.step(batches[0])) for name, s in steppers.items()}
    seconds = {name: [] for name in steppers}
    for r in range(rounds):
        order = list(steppers) if r % 2 == 0 else list(reversed(steppers))
        for name in order:
            seconds[name].append(steppers[name].block())
    shared = sum(p.numel() for p in steppers["sum"].model.encoder.parameters())
    found = {}
    for name in steppers:
        ratios = [mine / base for mine, base in zip(seconds[name], seconds["sum"])]
        low, _, high = statistics.quantiles(ratios, n=4)
        found[name] = {"ratio_to_sum": statistics.median(ratios), "iqr": [low, high],
                       "step_seconds": statistics.median(seconds[name]), "peak_tensor_mib": peaks[name],
                       "peak_over_sum": peaks[name] / peaks["sum"]}
    return {"size": size, "batch_per_task": batch, "length": length, "rounds": rounds, "steps_per_block": steps,
            "tasks": len(SPECS), "shared_parameters": shared, "variants": found}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    found = measure(args.size, args.batch, args.length, args.rounds, args.steps)
    found.update({"device": f"cpu ({platform.processor() or platform.machine()}), {args.threads} thread(s)",
                  "torch": torch.__version__, "precision": "fp32"})
    for name, row in found["variants"].items():
        print(f"{name:28s} {row['ratio_to_sum']:.3f}x sum (IQR {row['iqr'][0]:.3f}-{row['iqr'][1]:.3f}), "
              f"peak {row['peak_tensor_mib']:.1f} MiB ({row['peak_over_sum']:.2f}x sum)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, found)
    return found


if __name__ == "__main__":
    main()
