"""The harness's training step against a hand-written loop, on one accelerator.

    python tests/benchmarks/step_vs_loop.py --out results/gpu/h100-bf16.json          # BERT-base shape, bf16
    python tests/benchmarks/step_vs_loop.py --size tiny --device cpu --precision fp32  # small, on a CPU

A BERT-base-shaped encoder (built from its config, random weights: nothing is downloaded) with three
task heads (sentence classification, bi-encoder pair classification and regression), batch B = 32
per task, every sequence L tokens (each L of `--lengths`). On the same batches, in one process,
short blocks of steps take turns (the order alternating by round), and each ratio is taken within
a round, so that a busy machine slows both sides alike:

- `ideal`: the loop one would write by hand - under autocast, the three task losses summed, one
  backward, gradient clipping at 1.0, fused AdamW, zero_grad - with the same model and batches;
- `sum`, `pcgrad`, `sum+fgm`: the harness's `training_step` with that recipe (bench.step).

Reported per L: step seconds (median over rounds, CUDA events on a GPU), examples/s, model FLOPs
utilisation (bench.flops; against the GPU's bf16 peak), the ratios to `sum` and of `sum` to `ideal`,
and the peak memory of each step (CUDA allocator). Targets of issue 14: harness sum >= 0.95x the
ideal loop's throughput; PCGrad <= 1.15x sum's step; FGM <= 2.1x; PCGrad's peak <= sum's + T n 4 bytes
(n: the shared parameters; the T x n float32 gradient matrix).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch
from mtlbench.bench import flops
from mtlbench.bench.data import collate
from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.precision import StepPipeline, StepTimer
from mtlbench.bench.records import write_json_atomic
from mtlbench.bench.step import Strategies, make_optimizer, training_step
from mtlbench.strategies import registry
from mtlbench.tasks.builtin import QUORA, SST, STS
from transformers import BertConfig, BertModel

SIZES = {
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
             "vocab_size": 30522, "max_position_embeddings": 512},
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
             "vocab_size": 1000, "max_position_embeddings": 512},
}
RECIPES = {"sum": ("sum", ()), "pcgrad": ("pcgrad", ()), "sum+fgm": ("sum", ("fgm",))}
SPECS = (SST, QUORA, STS)


def make_batches(vocab: int, batch: int, length: int, count: int, seed: int = 0) -> list[dict[str, dict]]:
    """`count` steps of one batch per task: random tokens, every sequence `length` long."""
    generator = torch.Generator().manual_seed(seed)

    def ids():
        return torch.randint(5, vocab, (length,), generator=generator).tolist()
    steps = []
    for _ in range(count):
        step = {}
        for spec in SPECS:
            if spec.kind.is_pair:
                rows = [{"input_ids_a": ids(), "input_ids_b": ids(),
                         "label": float(torch.rand((), generator=generator)) * 5 if spec is STS
                         else int(torch.randint(0, 2, (), generator=generator))} for _ in range(batch)]
            else:
                rows = [{"input_ids": ids(), "label": int(torch.randint(0, 5, (), generator=generator))}
                        for _ in range(batch)]
            step[spec.name] = collate(rows, spec, 0)
        steps.append(step)
    return steps


def timed(timer: StepTimer, block) -> float:
    """Seconds of a block: CUDA events on a GPU (one synchronisation per block), else the clock."""
    started = timer.start()
    block()
    timer.stop(started)
    return timer.drain()[-1]


class Stepper:
    """One way of training the same model on the same batches."""

    def __init__(self, name: str, config: BertConfig, batches: list[dict], device: torch.device, precision: str):
        torch.manual_seed(0)
        self.name, self.device = name, device
        self.model = MultiTaskModel(BertModel(config, add_pooling_layer=False), list(SPECS), "mean",
                                    "concat_product", dropout=0.0).to(device)
        self.batches = [{t: {k: v.to(device) for k, v in b.items()} for t, b in step.items()} for step in batches]
        self.pipeline = StepPipeline(precision, device)
        tasks = [spec.name for spec in SPECS]
        if name == "ideal":
            self.optimizer = make_optimizer([{"params": list(self.model.parameters()), "lr": 1e-5,
                                              "weight_decay": 0.01}])
        else:
            combiner, regularizers = RECIPES[name]
            freezing = registry.build("freezing", "none", {}, self.model)
            self.strategies = Strategies(
                None, registry.build("combiner", combiner, {}, tasks, torch.Generator().manual_seed(0)),
                [registry.build("regularizer", r, {"epsilon": 1e-2}, torch.Generator().manual_seed(1))
                 for r in regularizers], freezing)
            self.optimizer = make_optimizer(freezing.parameter_groups(1e-5, 0.01))

    def step(self, batches: dict) -> None:
        if self.name != "ideal":
            training_step(self.model, self.strategies, batches, self.optimizer, None, 1.0, self.pipeline)
            return
        with self.pipeline.autocast():
            loss = sum(self.model(task, batch).loss for task, batch in batches.items())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def block(self) -> None:
        for batches in self.batches:
            self.step(batches)

    def peak_bytes(self) -> int | None:
        """The CUDA allocator's peak over one step, above what was allocated before it."""
        if self.device.type != "cuda":
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.step(self.batches[0])
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


def measure(size: str, length: int, batch: int, rounds: int, steps: int, device: torch.device,
            precision: str, names: list[str]) -> dict:
    config = BertConfig(**SIZES[size], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    batches = make_batches(config.vocab_size, batch, length, steps)
    timer = StepTimer(device)
    steppers = {name: Stepper(name, config, batches, device, precision) for name in names}
    peaks = {}
    for stepper in steppers.values():  # warm-up: kernels, the allocator, the optimizer's state
        stepper.block()
        peaks[stepper.name] = stepper.peak_bytes()
    seconds = {name: [] for name in steppers}
    for r in range(rounds):
        order = list(steppers) if r % 2 == 0 else list(reversed(steppers))
        for name in order:
            seconds[name].append(timed(timer, steppers[name].block) / steps)
    model = steppers[names[0]].model
    step_flops = sum(flops.batch_flops(flops.per_token(model), b["input_ids"]) for b in batches[0].values())
    examples = batch * len(SPECS)
    shared = sum(p.numel() for p in model.shared_parameters())
    result = {"length": length, "batch_per_task": batch, "tasks": len(SPECS), "shared_parameters": shared,
              "steppers": {}}
    peak = flops.peak_tflops(device, precision)
    for name, values in seconds.items():
        median = statistics.median(values)
        achieved = step_flops / median / 1e12
        result["steppers"][name] = {
            "step_seconds": median, "examples_per_second": examples / median,
            "model_tflops_per_second": achieved, "mfu": achieved / peak if peak else None,
            "peak_memory_bytes": peaks[name]}

    def ratio(a: str, b: str) -> dict | None:
        if a not in seconds or b not in seconds:
            return None
        per_round = [x / y for x, y in zip(seconds[a], seconds[b])]
        return {"median": statistics.median(per_round), "rounds": per_round}
    result["ratios"] = {"sum/ideal step": ratio("sum", "ideal"), "pcgrad/sum step": ratio("pcgrad", "sum"),
                        "fgm/sum step": ratio("sum+fgm", "sum")}
    if peaks.get("pcgrad") is not None and peaks.get("sum") is not None:
        result["pcgrad_extra_peak_bytes"] = peaks["pcgrad"] - peaks["sum"]
        result["pcgrad_extra_peak_allowed"] = len(SPECS) * shared * 4
    return result


def targets(result: dict) -> dict[str, bool | None]:
    """Issue 14's targets, checked on one length's result."""
    ratios = result["ratios"]

    def at_most(entry, limit):
        return None if entry is None else entry["median"] <= limit
    memory = (None if "pcgrad_extra_peak_bytes" not in result
              else result["pcgrad_extra_peak_bytes"] <= result["pcgrad_extra_peak_allowed"])
    return {"sum >= 0.95x ideal throughput": at_most(ratios["sum/ideal step"], 1 / 0.95),
            "pcgrad <= 1.15x sum": at_most(ratios["pcgrad/sum step"], 1.15),
            "fgm <= 2.1x sum": at_most(ratios["fgm/sum step"], 2.1),
            "pcgrad peak <= sum + T n 4 bytes": memory}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="step_vs_loop.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--lengths", default="64,128", help="comma-separated sequence lengths")
    parser.add_argument("--batch", type=int, default=32, help="examples per task batch")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5, help="steps per block")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("--steppers", default="ideal,sum,pcgrad,sum+fgm")
    parser.add_argument("--out", help="JSON file to write (default: print only)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    names = args.steppers.split(",")
    unknown = sorted(set(names) - {"ideal", *RECIPES})
    if unknown:
        parser.error(f"--steppers: unknown {', '.join(unknown)}; known: ideal, {', '.join(RECIPES)}")
    report = {
        "command": "python tests/benchmarks/step_vs_loop.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "precision": args.precision, "size": args.size, "results": [],
    }
    for length in (int(x) for x in args.lengths.split(",")):
        result = measure(args.size, length, args.batch, args.rounds, args.steps, device, args.precision, names)
        result["targets"] = targets(result)
        report["results"].append(result)
        line = ", ".join(f"{name} {s['step_seconds'] * 1e3:.1f} ms ({s['examples_per_second']:.0f} ex/s"
                         + (f", MFU {s['mfu']:.1%}" if s["mfu"] is not None else "") + ")"
                         for name, s in result["steppers"].items())
        ratios = ", ".join(f"{k} {v['median']:.3f}" for k, v in result["ratios"].items() if v)
        print(f"L={length}: {line}\n  ratios: {ratios}\n  targets: {result['targets']}")
    if args.out:
        write_json_atomic(Path(args.out), report)
    missed = [f"L={r['length']}: {name}" for r in report["results"] for name, met in r["targets"].items()
              if met is False]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
