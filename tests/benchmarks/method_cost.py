"""Paired step cost and peak memory of the methods issue 24 added, each against the summed loss with
full fine-tuning, on the tiny or the BERT-base-shaped encoder (random weights, CPU is fine for ratios):

    python tests/benchmarks/method_cost.py --family representation --size base --batch 4 --length 32 \
        --out results/method-cost/representation-base.json

Families: `representation` (pcgrad, mgda, cagrad, nash_mtl with `on` = parameters and representation),
`combiners` (every combiner added by issue 24), `regularizers` (R3F, R-Drop, and FGM for reference),
`peft` (LoRA r 4 and 16, BitFit, the frozen backbone). Every round runs one block of each variant
in turn in one process on the same batches (the order alternating by round), timed by CPU time, so a
busy machine slows a round's blocks alike; each ratio is taken within a round and reported as the
median over rounds with its 95 % interval, rounds added until it is within ±3 % (the table's
estimator, bench.paired_rounds). Memory: the step's peak tensor memory above what was live
before it (the torch profiler's allocations; exact for tensors, blind to allocator caching), and
what stays live between steps for training (parameters, gradients, optimizer state).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.paired_rounds import Clock, paired_rounds
from mtlbench.bench.precision import StepPipeline
from mtlbench.bench.records import write_json_atomic
from mtlbench.bench.step import Strategies, make_optimizer, training_step
from mtlbench.strategies import registry

from tests.benchmarks.step_vs_loop import SIZES, SPECS, make_batches
from tests.benchmarks.test_step_cost import step_peak_tensor_memory

NEW_COMBINERS = ("stch", "fairgrad", "excess_mtl", "moco", "sdmgrad", "modo", "conflict_free", "dualproj", "imtl",
                 "auto_lambda", "gls")


def variants(family: str) -> dict[str, dict]:
    """Each variant's (combiner, its options, regularisers, freezing, its options) by name; `sum` first."""
    found = {"sum": {}}
    if family == "representation":
        for method in ("pcgrad", "mgda", "cagrad", "nash_mtl"):
            found[f"{method}/parameters"] = {"combiner": (method, {"on": "parameters"})}
            found[f"{method}/representation"] = {"combiner": (method, {"on": "representation"})}
    elif family == "combiners":
        found.update({name: {"combiner": (name, {})} for name in NEW_COMBINERS})
    elif family == "regularizers":
        found.update({name: {"regularizers": [(name, {})]} for name in ("r3f", "rdrop", "fgm")})
    elif family == "peft":
        found.update({"lora r=4": {"freezing": ("lora", {"rank": 4})}, "lora r=16": {"freezing": ("lora", {"rank": 16})},
                      "bitfit": {"freezing": ("bitfit", {})}, "frozen_backbone": {"freezing": ("frozen_backbone", {})}})
    return found


class Stepper:
    def __init__(self, variant: dict, config: BertConfig, batches: list[dict]):
        torch.manual_seed(0)
        self.model = MultiTaskModel(BertModel(config, add_pooling_layer=False), list(SPECS), "mean",
                                    "concat_product", dropout=0.1).train()  # dropout on: R-Drop needs it
        tasks = [spec.name for spec in SPECS]
        freezing = registry.build("freezing", *variant.get("freezing", ("none", {})), self.model)
        combiner = registry.build("combiner", *variant.get("combiner", ("sum", {})), tasks,
                                  torch.Generator().manual_seed(0))
        regularizers = [registry.build("regularizer", name, options, torch.Generator().manual_seed(1))
                        for name, options in variant.get("regularizers", ())]
        self.strategies = Strategies(None, combiner, regularizers, freezing)
        self.optimizer = make_optimizer(freezing.parameter_groups(1e-5, 0.01) + combiner.optimizer_groups(1e-5, "cpu"))
        self.batches, self.pipeline = batches, StepPipeline("fp32", torch.device("cpu"))
        self.extra = [batches[(i + 1) % len(batches)] for i in range(len(batches))]  # the next step's batches

    def step(self, batches, extra=None) -> None:
        extra = [extra or self.extra[0]] * self.strategies.combiner.extra_batches
        training_step(self.model, self.strategies, batches, self.optimizer, None, 1.0, self.pipeline, extra=extra)

    def trained(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def live_bytes(self) -> int:
        """Parameters, their gradients' room and the optimizer's state: what training keeps between steps."""
        state = sum(t.numel() * t.element_size() for s in self.optimizer.state.values() for t in s.values()
                    if torch.is_tensor(t))
        return (sum(p.numel() * p.element_size() for p in self.model.parameters())
                + sum(p.numel() * p.element_size() for p in self.model.parameters() if p.requires_grad) + state)

    def block(self, round_index: int = 0) -> int:
        """One block of steps; returns how many (the estimator's clock times it)."""
        for batches, extra in zip(self.batches, self.extra):
            self.step(batches, extra)
        return len(self.batches)


def measure(family: str, size: str, batch: int, length: int, rounds: int, steps: int,
            only: list[str] | None = None, threads: int = 1, target: float = 0.03) -> dict:
    config = BertConfig(**SIZES[size])
    batches = make_batches(config.vocab_size, batch, length, steps)
    chosen = {name: v for name, v in variants(family).items() if name == "sum" or not only or name in only}
    steppers = {name: Stepper(variant, config, batches) for name, variant in chosen.items()}
    for stepper in steppers.values():  # warm-up: the optimizer's state is allocated at the first step
        stepper.block()
    peaks = {name: step_peak_tensor_memory(lambda s=s: s.step(batches[0])) for name, s in steppers.items()}
    # the table's estimator (bench.paired_rounds): CPU time, rounds until every ratio is within ±target
    result = paired_rounds({name: s.block for name, s in steppers.items()}, "sum", Clock.for_device("cpu", threads),
                           min_rounds=6, max_rounds=rounds, target=target)
    shared = sum(p.numel() for p in steppers["sum"].model.encoder.parameters())
    found = {}
    for name, stepper in steppers.items():
        ratio = result.summary(name) if name != "sum" else {"ratio": 1.0, "ratio_ci": [1.0, 1.0], "precise": True,
                                                             "seconds": statistics.median(result.seconds["sum"])}
        found[name] = {"ratio_to_sum": ratio["ratio"], "ci": ratio["ratio_ci"], "precise": ratio["precise"],
                       "step_seconds": ratio["seconds"], "peak_tensor_mib": peaks[name],
                       "peak_over_sum": peaks[name] / peaks["sum"], "trained_parameters": stepper.trained(),
                       "live_mib": stepper.live_bytes() / 2**20}
    return {"family": family, "size": size, "batch_per_task": batch, "length": length, "rounds": result.rounds,
            "clock": result.clock,
            "steps_per_block": steps, "tasks": len(SPECS), "shared_parameters": shared, "variants": found}


def render(folder: Path) -> str:
    """Markdown tables of every measurement in `folder` (one per JSON file)."""
    from tests.benchmarks.measurements import measurements

    parts = []
    for file_name, found in measurements(folder):
        parts.append(f"`{file_name}`: {found['family']}, {found['size']} encoder ({found['shared_parameters']:,} "
                     f"encoder parameters), {found['tasks']} tasks x batch {found['batch_per_task']} x length "
                     f"{found['length']}, {found['rounds']} rounds of {found['steps_per_block']} step(s), {found['device']}\n")
        spread = "95 % interval" if "ci" in next(iter(found["variants"].values())) else "IQR over rounds"
        parts.append(f"| variant | step x sum (median) | {spread} | step peak tensor MiB | x sum | live MiB | trained parameters |")
        parts.append("|---|---:|---:|---:|---:|---:|---:|")
        for name, row in found["variants"].items():
            low, high = row.get("ci") or row.get("iqr") or (float("nan"), float("nan"))
            parts.append(f"| {name} | {row['ratio_to_sum']:.3f} | {low:.3f}-{high:.3f} | "
                         f"{row['peak_tensor_mib']:.1f} | {row['peak_over_sum']:.2f} | {row['live_mib']:.0f} | "
                         f"{row['trained_parameters']:,} |")
        parts.append("")
    return "\n".join(parts)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", choices=["representation", "combiners", "regularizers", "peft"],
                        default="representation")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30, help="the most rounds (fewer once every ratio is precise)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="comma-separated variants of the family to measure (sum always)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--render", type=Path, help="print the tables of the measurements in this folder and stop")
    args = parser.parse_args(argv)
    if args.render:
        print(render(args.render))
        return {}
    torch.set_num_threads(args.threads)
    found = measure(args.family, args.size, args.batch, args.length, args.rounds, args.steps,
                    args.only.split(",") if args.only else None, args.threads)
    found.update({"device": f"cpu ({platform.processor() or platform.machine()}), {args.threads} thread(s)",
                  "torch": torch.__version__, "precision": "fp32"})
    for name, row in found["variants"].items():
        print(f"{name:28s} {row['ratio_to_sum']:.3f}x sum (95 % {row['ci']}{'' if row['precise'] else ', not precise'}), "
              f"step peak {row['peak_tensor_mib']:.1f} MiB ({row['peak_over_sum']:.2f}x sum), "
              f"live {row['live_mib']:.0f} MiB, trains {row['trained_parameters']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out, found)
    return found


if __name__ == "__main__":
    main()
