"""Training-step cost, measured with pytest-benchmark on the same batches.

The normal test run executes each benchmark once, untimed (--benchmark-disable in pyproject), so
they cannot rot; time them with

    python -m pytest tests/benchmarks -n 0 --benchmark-enable --benchmark-group-by=group
"""

import itertools
import os
import statistics
from pathlib import Path

import pytest
import torch
from mtlbench.bench.config import Recipe, StrategySpec
from mtlbench.bench.context import build_strategies
from mtlbench.bench.data import Encoding, TaskBatches, tokenize
from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.step import make_optimizer, training_step
from mtlbench.tasks.builtin import SST
from mtlbench.tasks.synthetic import SyntheticConfig, generate


def _pad_to(batch: dict, length: int, pad_id: int) -> dict:
    """The batch as a fixed-length pipeline would feed it (every example padded to `length`)."""
    extra = length - batch["input_ids"].shape[1]
    return {**batch,
            "input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad_id),
            "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0)}


def _stepper(encoder, tokenizer, pad_to: int | None):
    torch.manual_seed(0)
    rows = generate("sst", SyntheticConfig(sst_train=256)).rows["train"]
    dataset = tokenize(rows, tokenizer, Encoding("single", 128), Path(os.environ["MTLBENCH_CACHE"]) / "tokens")
    batches = TaskBatches(dataset, SST, 32, tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    stream = batches.stream()
    fixed = [next(stream) for _ in range(8)]
    if pad_to:
        fixed = [_pad_to(b, pad_to, tokenizer.pad_token_id) for b in fixed]
    model = MultiTaskModel(encoder, [SST], "mean", "concat_product")
    recipe = Recipe("rr", StrategySpec.make("sampler", "round_robin"), StrategySpec.make("combiner", "sum"), (),
                    StrategySpec.make("freezing", "none"), "mean", "concat_product")
    strategies = build_strategies(recipe, model, {"sst": batches}, 0)
    optimizer = make_optimizer([{"params": list(model.parameters()), "lr": 1e-3}])
    cycle = itertools.cycle(fixed)
    return lambda: training_step(model, strategies, {"sst": next(cycle)}, optimizer)


@pytest.mark.benchmark(group="padding")
def test_step_dynamic_padding(benchmark, encoder, tokenizer):
    benchmark(_stepper(encoder, tokenizer, pad_to=None))


@pytest.mark.benchmark(group="padding")
def test_step_padded_to_max_length(benchmark, encoder, tokenizer):
    benchmark(_stepper(encoder, tokenizer, pad_to=encoder.config.max_position_embeddings))


def _joint_stepper(encoder, tokenizer, combiner: str = "sum", regularizers: tuple = (), freezing: str = "none",
                   one_task_per_step: bool = False, textbook_fgm: bool = False):
    """A joint (all-tasks) step on fixed SST / Quora / STS batches with the given strategies
    (`regularizers`: (name, options) pairs); with `one_task_per_step`, a round-robin step on the
    same batches, one task's batch at a time. `textbook_fgm`: instead of the trainer, the usual
    hand-written FGM loop (per task: backward, perturb, adversarial forward and backward), as the
    reference the trainer's FGM step is held to."""
    from mtlbench.tasks.builtin import QUORA, STS

    torch.manual_seed(0)
    cache = Path(os.environ["MTLBENCH_CACHE"]) / "tokens"
    config = SyntheticConfig(sst_train=256, quora_train=256, sts_train=256)
    sets, fixed = {}, []
    for spec, mode in ((SST, "single"), (QUORA, "bi"), (STS, "bi")):
        dataset = tokenize(generate(spec.name, config).rows["train"], tokenizer, Encoding(mode, 64), cache)
        sets[spec.name] = TaskBatches(dataset, spec, 32, tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    streams = {task: batches.stream() for task, batches in sets.items()}
    fixed = [{task: next(stream) for task, stream in streams.items()} for _ in range(8)]
    if one_task_per_step:
        fixed = [{task: batch} for step in fixed for task, batch in step.items()]
    model = MultiTaskModel(encoder, [SST, QUORA, STS], "mean", "concat_product")
    recipe = Recipe(combiner, StrategySpec.make("sampler", "joint", {"steps_per_epoch": "balanced"}),
                    StrategySpec.make("combiner", combiner),
                    tuple(StrategySpec.make("regularizer", name, dict(options)) for name, options in regularizers),
                    StrategySpec.make("freezing", freezing), "mean", "concat_product")
    strategies = build_strategies(recipe, model, sets, 0)
    optimizer = make_optimizer(strategies.freezing.parameter_groups(1e-3, 0.01)
                               + strategies.combiner.optimizer_groups(1e-3, torch.device("cpu")))
    strategies.freezing.on_epoch_start(1)
    strategies.combiner.on_epoch_start(1)
    cycle = itertools.cycle(fixed)
    if textbook_fgm:
        step = lambda: _textbook_fgm_step(model, next(cycle), optimizer)
    else:
        extra = strategies.combiner.extra_batches  # double sampling, a held-out batch: the cycle's next steps

        def step():
            batches = next(cycle)
            return training_step(model, strategies, batches, optimizer, extra=[next(cycle) for _ in range(extra)])
    step.model, step.optimizer = model, optimizer  # for tests that compare variants
    return step


def _textbook_fgm_step(model, batches: dict, optimizer) -> None:
    from mtlbench.strategies import registry
    from mtlbench.strategies.adversarial import fgm_perturbation

    epsilon = registry.get("regularizer", "fgm").Options().epsilon  # the default, as the "fgm" variant

    for task, batch in batches.items():
        embeddings = model.input_embeddings(batch["input_ids"])
        embeddings.retain_grad()
        model(task, batch, inputs_embeds=embeddings).loss.backward()
        r = fgm_perturbation(embeddings.grad, batch["attention_mask"], epsilon)
        model(task, batch, inputs_embeds=model.input_embeddings(batch["input_ids"]) + r).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def all_combiners() -> list[str]:
    from mtlbench.strategies import registry

    return ["sum", *sorted(name for name in registry.available("combiner") if name != "sum")]


@pytest.mark.benchmark(group="combiner (joint step, 3 tasks)")
@pytest.mark.parametrize("combiner", all_combiners())
def test_joint_step_cost(benchmark, encoder, tokenizer, combiner):
    benchmark(_joint_stepper(encoder, tokenizer, combiner))


def _quick_encoder():
    """The quick suite's own tiny encoder (64 wide), built on first use like `mtlbench run` does."""
    import tempfile

    from mtlbench.bench import backbone

    os.environ.setdefault("MTLBENCH_CACHE", tempfile.mkdtemp(prefix="mtlbench-bench-"))
    backbone.quiet_transformers()
    path = str(backbone.ensure_tiny(log=lambda m: None))
    return path, backbone.load_tokenizer(path)


# Encoders to time with: the quick suite's own, or a randomly initialised wider one of BERT's shape
# (cost does not depend on the weights), which shows how fixed per-step overheads weigh less.
ENCODER_WIDTHS = {"tiny": None, "bert-mini-shape": (256, 4, 4, 1024)}
_encoder_width = "tiny"


def encoder(path):
    from mtlbench.bench import backbone

    if ENCODER_WIDTHS[_encoder_width] is None:
        return backbone.load_encoder(path)
    from transformers import BertConfig, BertModel

    hidden, layers, heads, intermediate = ENCODER_WIDTHS[_encoder_width]
    tiny = backbone.load_encoder(path).config
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=tiny.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, intermediate_size=intermediate,
                                max_position_embeddings=tiny.max_position_embeddings, pad_token_id=tiny.pad_token_id))


def paired_step_costs(variants: dict[str, dict], rounds: int = 30, steps: int = 12, target: float = 0.03):
    """Each variant's paired cost against the first (keyword arguments of `_joint_stepper`), on the
    table's estimator (bench.paired_rounds): rounds of one block of `steps` steps of every variant
    in turn in one process, CPU time, until every median ratio's 95 % interval is within ±target
    (at most `rounds`). Round-robin variants step 3 times per step counted (one per task), so that
    each block holds the same batches."""
    from mtlbench.bench.paired_rounds import Clock, paired_rounds

    path, tokenizer = _quick_encoder()
    steppers = {name: _joint_stepper(encoder(path), tokenizer, **kwargs) for name, kwargs in variants.items()}
    group = {name: 3 if kwargs.get("one_task_per_step") else 1 for name, kwargs in variants.items()}
    for step in steppers.values():
        for _ in range(21):  # warm-up
            step()

    def block(name):
        def run(round_index):
            for _ in range(steps):
                steppers[name]()
            return steps / group[name]
        return run
    return paired_rounds({name: block(name) for name in steppers}, next(iter(variants)),
                         Clock.for_device("cpu", torch.get_num_threads()), 6, rounds, target)


def step_peak_tensor_memory(step) -> float:
    """Peak MiB of tensor memory live during one step, above what was live before it: the torch
    profiler's allocation records (self memory per op, in time order, so nested ops count once).
    Exact for tensors, blind to allocator caching, the same on CPU and GPU."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        step()
    live = peak = 0
    for event in sorted(profiler.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def cost_table(variants: dict[str, dict], rounds: int = 30) -> str:
    """Markdown: median step time, its paired ratio to the first variant's with the 95 % interval
    of that median (bench.paired_rounds) and the step's peak tensor memory."""
    result = paired_step_costs(variants, rounds)
    path, tokenizer = _quick_encoder()
    peaks = {}
    for name, kwargs in variants.items():
        step = _joint_stepper(encoder(path), tokenizer, **kwargs)
        for _ in range(3):  # optimizer state exists before the measured step
            step()
        peaks[name] = step_peak_tensor_memory(step)
    base = next(iter(variants))
    lines = [f"{result.rounds} rounds, {result.clock} clock",
             f"| variant | step (ms CPU, median) | × {base} (median of rounds) | 95 % interval | peak tensor memory (MiB) |",
             "|---|---:|---:|---:|---:|"]
    for name in variants:
        seconds = statistics.median(result.seconds[name]) * 1000
        if name == base:
            lines.append(f"| {name} | {seconds:.2f} | 1 | – | {peaks[name]:.2f} |")
            continue
        found = result.summary(name)
        low, high = found["ratio_ci"] or (float("nan"), float("nan"))
        lines.append(f"| {name} | {seconds:.2f} | {found['ratio']:.3f}{'' if found['precise'] else ' ?'} | "
                     f"{low:.3f}–{high:.3f} | {peaks[name]:.2f} |")
    return "\n".join(lines)


COMBINERS = {name: {"combiner": name} for name in all_combiners()}
REGULARIZERS_AND_FREEZING = {
    "sum": {},
    "fgm": {"regularizers": (("fgm", {}),)},
    "fgsm": {"regularizers": (("fgsm", {}),)},
    "pgd (K=3)": {"regularizers": (("pgd", {"steps": 3}),)},
    "freelb (K=3)": {"regularizers": (("freelb", {"steps": 3}),)},
    "smart": {"regularizers": (("smart", {}),)},
    "contrastive": {"regularizers": (("contrastive", {}),)},
    "frozen_backbone": {"freezing": "frozen_backbone"},
    "frozen_embeddings": {"freezing": "frozen_embeddings"},
    "gradual_unfreezing (epoch 1)": {"freezing": "gradual_unfreezing"},
    "frozen_head": {"freezing": "frozen_head"},
    "layerwise_lr_decay": {"freezing": "layerwise_lr_decay"},
}


ATTACKS = {**{name: REGULARIZERS_AND_FREEZING[name] for name in ("sum", "fgm", "fgsm", "pgd (K=3)")},
           "fgm, textbook loop": {"textbook_fgm": True}}
ONE_STEP_ATTACKS = {name: {**kwargs, "one_task_per_step": True} for name, kwargs in ATTACKS.items()}


def test_the_textbook_fgm_loop_computes_the_trainers_fgm_gradients(encoder, tokenizer):
    """The reference loop is a fair yardstick only if it does the trainer's FGM step's work."""
    import copy

    grads = []
    for kwargs in ({"regularizers": (("fgm", {}),)}, {"textbook_fgm": True}):
        step = _joint_stepper(copy.deepcopy(encoder), tokenizer, **kwargs)
        step.model.eval()  # no dropout: both see the same function
        model, seen = step.model, {}

        def keep_gradients(model=model, seen=seen):
            seen.update({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})

        step.optimizer.step = keep_gradients
        step()
        grads.append(seen)
    trainer, textbook = grads
    assert trainer.keys() == textbook.keys() and len(trainer) > 10
    for name, g in trainer.items():
        torch.testing.assert_close(g, textbook[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.benchmark(group="regularizers and freezing (joint step, 3 tasks)")
def test_textbook_fgm_step_cost(benchmark, encoder, tokenizer):
    benchmark(_joint_stepper(encoder, tokenizer, textbook_fgm=True))


@pytest.mark.benchmark(group="regularizers and freezing (joint step, 3 tasks)")
@pytest.mark.parametrize("variant", list(REGULARIZERS_AND_FREEZING))
def test_regularizer_and_freezing_step_cost(benchmark, encoder, tokenizer, variant):
    benchmark(_joint_stepper(encoder, tokenizer, **REGULARIZERS_AND_FREEZING[variant]))


if __name__ == "__main__":  # python tests/benchmarks/test_step_cost.py [combiners|regularizers|attacks|round_robin]
    import argparse

    from mtlbench.bench.settings import TrainSettings

    arguments = argparse.ArgumentParser()
    arguments.add_argument("which", nargs="*", default=["combiners", "regularizers"])
    arguments.add_argument("--threads", type=int, default=TrainSettings().threads,
                           help="intra-op threads (default: a run's, 1)")
    arguments.add_argument("--rounds", type=int, default=30, help="the most rounds of 12 steps per variant")
    arguments.add_argument("--encoder", choices=list(ENCODER_WIDTHS), default="tiny")
    args = arguments.parse_args()
    _encoder_width = args.encoder
    torch.set_num_threads(args.threads)
    print(f"{args.encoder} encoder, {args.threads} thread(s), at most {args.rounds} x 12 steps per variant")
    if "combiners" in args.which:
        print(cost_table(COMBINERS, args.rounds))
    if "regularizers" in args.which:
        print(cost_table(REGULARIZERS_AND_FREEZING, args.rounds))
    if "attacks" in args.which:  # the joint step: the adversarial rows and the textbook FGM loop
        print(cost_table(ATTACKS, args.rounds))
    if "round_robin" in args.which:  # the report's setting: one task's batch per step
        print(cost_table(ONE_STEP_ATTACKS, args.rounds))
