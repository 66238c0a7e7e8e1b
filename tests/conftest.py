"""Shared fixtures: a private cache, a very small pretrained encoder, a tiny suite file."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

TINY_ENCODER = {"hidden_size": 32, "num_layers": 3, "num_heads": 2, "intermediate_size": 64,
                "max_positions": 48, "pretrain_steps": 40, "pretrain_batch_size": 32}
SMALL_DATA = {"sst_train": 96, "sst_dev": 48, "sst_test": 16, "quora_train": 192, "quora_dev": 48,
              "quora_test": 16, "sts_train": 96, "sts_dev": 48, "sts_test": 16}


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Every test writes its encoders and token caches under one session directory."""
    path = tmp_path_factory.mktemp("mtlbench-cache")
    with pytest.MonkeyPatch.context() as session:
        session.setenv("MTLBENCH_CACHE", str(path))
        yield path


@pytest.fixture(scope="session", autouse=True)
def one_run_at_a_time():
    """A test's runs go one at a time in its own process (inline) unless it asks for workers with
    --jobs: under `pytest -n auto` each test process already has a core of its own, and a worker
    pool would spend ~5 s importing torch and transformers per worker for a few seconds of training."""
    with pytest.MonkeyPatch.context() as session:
        session.setenv("MTLBENCH_JOBS", "1")
        yield


@pytest.fixture(scope="session", autouse=True)
def catch_sigint():
    """SIGINT caught here, so that the commands the tests start get it at its default: a shell's
    background job ignores SIGINT, an ignored signal stays ignored across exec, and Python then
    keeps it ignored, so a test's Ctrl-C would never arrive (a caught one is reset at exec)."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield


# The paired step-cost measurement, short: tests check what it records, not how precise it is.
FEW_COST_ROUNDS = {"rounds": 2, "block_batches": 3, "block_seconds": 0.0}


def _toml_table(name: str, values: dict) -> str:
    return f"[{name}]\n" + "\n".join(f"{k} = {v!r}" for k, v in values.items()) + "\n"


def write_suite(path: Path, recipes: str, extra: str = "", train: str = "epochs = 1\nbatch_size = 16\nlr = 2e-3",
                name: str = "tiny-test") -> Path:
    path.write_text(textwrap.dedent(f"""\
        name = "{name}"
        description = "test suite"
        tasks = ["sst", "quora", "sts"]
        {extra}
        [train]
        {train}
        """) + _toml_table("synthetic", SMALL_DATA) + _toml_table("tiny_encoder", TINY_ENCODER)
        + ("" if "[cost]" in recipes + extra else _toml_table("cost", FEW_COST_ROUNDS)) + recipes)
    return path


@pytest.fixture(scope="session")
def tiny_encoder_path(private_cache):
    from mtlbench.bench import backbone

    backbone.quiet_transformers()
    return str(backbone.ensure_tiny(backbone.TinyEncoderConfig(**TINY_ENCODER), log=lambda m: None))


@pytest.fixture(scope="session")
def tokenizer(tiny_encoder_path):
    from mtlbench.bench import backbone

    backbone.quiet_transformers()
    return backbone.load_tokenizer(tiny_encoder_path)


@pytest.fixture
def encoder(tiny_encoder_path):
    from mtlbench.bench import backbone

    return backbone.load_encoder(tiny_encoder_path)


@pytest.fixture
def real_step(encoder, tokenizer):
    """A fresh three-task model (eval mode: no dropout) and one small batch per task."""
    from mtlbench.bench.data import Encoding, collate, tokenize
    from mtlbench.bench.model import MultiTaskModel
    from mtlbench.tasks.builtin import QUORA, SST, STS
    from mtlbench.tasks.synthetic import SyntheticConfig, generate

    cache = Path(os.environ["MTLBENCH_CACHE"]) / "tokens"
    config = SyntheticConfig(sst_train=8, quora_train=8, sts_train=8)
    batches = {}
    for spec, mode in ((SST, "single"), (QUORA, "bi"), (STS, "bi")):
        dataset = tokenize(generate(spec.name, config).rows["train"], tokenizer, Encoding(mode, 32), cache)
        batches[spec.name] = collate(dataset.to_list(), spec, tokenizer.pad_token_id)
    return MultiTaskModel(encoder, [SST, QUORA, STS], "mean", "concat_product").eval(), batches


def gradients_by_hand(model, batches):
    """Each task's gradient of the shared parameters (T x n, zeros where unused, e.g. the pooler)
    and of its own head, by separate autograd calls."""
    import torch

    shared, heads = model.shared_parameters(), model.task_parameters()
    rows = []
    for task, batch in batches.items():
        grads = torch.autograd.grad(model(task, batch).loss, shared, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1)
                               for g, p in zip(grads, shared)]))
    head_grads = {t: torch.autograd.grad(model(t, b).loss, heads[t]) for t, b in batches.items()}
    return torch.stack(rows), head_grads


# --- combiners on known Jacobians ------------------------------------------------------------------

def linear_losses(jacobian, values, parameter, order=None):
    """Task losses with the given values whose gradients w.r.t. `parameter` are the Jacobian's rows
    (tasks named t0, t1, ...), listed in `order` (default: row order)."""
    order = range(len(jacobian)) if order is None else order
    inputs = parameter if isinstance(parameter, dict) else {f"t{i}": parameter for i in order}
    return {f"t{i}": values[i] + (jacobian[i] @ inputs[f"t{i}"] - (jacobian[i] @ inputs[f"t{i}"]).detach())
            for i in order}


def build_combiner(name, tasks, seed=0, **options):
    import torch
    from mtlbench.strategies import registry
    cls = registry.get("combiner", name)
    return cls(registry.make_options(cls, options, "test"), list(tasks), torch.Generator().manual_seed(seed))


def combiner_updates(name, jacobians, values, *, seed=0, order=None, task_order=None, options=None):
    """Run a combiner over consecutive steps with the given Jacobians (T x n each) and loss values;
    returns each step's update (the shared parameter's `.grad`) and the combiner. Each step is also
    an epoch (for epoch-based methods), and the losses after each step are 0.9 times those before
    it, with the last task's 0.99 (for methods that watch the decrease)."""
    import torch
    from mtlbench.strategies.base import IDENTITY_PIPELINE, StepInputs

    tasks = [f"t{i}" for i in range(len(jacobians[0]))]
    combiner = build_combiner(name, task_order or tasks, seed, **(options or {}))
    combiner.optimizer_groups(1e-3, torch.device("cpu"))
    updates = []
    for epoch, (jacobian, value) in enumerate(zip(jacobians, values), 1):
        combiner.on_epoch_start(epoch)
        theta = torch.nn.Parameter(torch.zeros(jacobian.shape[1], dtype=jacobian.dtype))
        # extra batches (double sampling, a held-out batch) have the same Jacobian here; with
        # `on = "representation"` each task reads its own copy z_t = theta (an identity encoder)
        representations = ({t: theta * 1.0 for t in tasks} if combiner.needs_representations else None)
        combiner.prepare(StepInputs(
            lambda jacobian=jacobian, value=value, theta=theta: [linear_losses(jacobian, value, theta, order)
                                                                 for _ in range(combiner.extra_batches)], 1e-3,
            representations))
        combiner.backward(linear_losses(jacobian, value, representations or theta, order), [theta], {},
                          IDENTITY_PIPELINE)
        updates.append(theta.grad.detach().clone())
        decrease = torch.full_like(value, 0.9)
        decrease[-1] = 0.99
        combiner.after_step(dict(zip(tasks, value)),
                            lambda value=value, decrease=decrease: {t: (value * decrease)[i] for i, t in enumerate(tasks)})
    return updates, combiner
