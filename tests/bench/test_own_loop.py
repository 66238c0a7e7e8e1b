"""`mtlbench.StrategyStep` in a hand-written loop gives the harness's gradients on the same batches:
sum, PCGrad, MGDA, FGM, and a freezing schedule; and the README's plain loop runs."""

import copy

import mtlbench
import pytest
import torch
from mtlbench.bench.step import Strategies, training_step
from mtlbench.strategies import registry

from tests.strategies.regularizers.test_adversarial import _GradientCapture

CASES = {"sum": {}, "pcgrad": {"combiner": "pcgrad"}, "mgda": {"combiner": {"name": "mgda", "normalization": "l2"}},
         "fgm": {"regularizers": [{"name": "fgm", "epsilon": 0.5}]},
         "pcgrad+fgm": {"combiner": "pcgrad", "regularizers": ["fgm"]},
         "frozen_embeddings": {"combiner": "pcgrad", "freezing": "frozen_embeddings"}}


def _spec(entry):
    return (entry, {}) if isinstance(entry, str) else (entry["name"], {k: v for k, v in entry.items() if k != "name"})


def harness_gradients(model, batches, case):
    tasks = list(batches)
    combiner = registry.build("combiner", *_spec(case.get("combiner", "sum")), tasks, torch.Generator().manual_seed(0))
    regularizers = [registry.build("regularizer", *_spec(r), torch.Generator().manual_seed(1 + i))
                    for i, r in enumerate(case.get("regularizers", ()))]
    freezing = registry.build("freezing", *_spec(case.get("freezing", "none")), model)
    capture = _GradientCapture(model)
    training_step(model, Strategies(None, combiner, regularizers, freezing), batches, capture, max_grad_norm=None)
    return capture.grads


def own_loop_gradients(model, batches, case):
    step = mtlbench.StrategyStep(tasks=list(batches), shared=model.encoder.parameters(),
                                 heads={t: model.heads[t].parameters() for t in batches}, model=model, seed=0, **case)
    if case.get("regularizers"):
        inputs = {t: mtlbench.TaskInputs(embeddings=model.input_embeddings(b["input_ids"]),
                                         forward=model.outputs_closure(t, b), padding_mask=b["attention_mask"],
                                         labels=b["labels"], spec=model.specs[t]) for t, b in batches.items()}
    else:
        inputs = {t: model(t, b).loss for t, b in batches.items()}
    step.backward(inputs)
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list(CASES))
def test_the_own_loop_step_gives_the_harness_gradients(real_step, name):
    model, batches = real_step
    twin = copy.deepcopy(model)
    harness = harness_gradients(model, batches, CASES[name])
    own = own_loop_gradients(twin, batches, CASES[name])
    assert harness.keys() == own.keys()
    largest = 0.0
    for parameter, expected in harness.items():
        got = own[parameter]
        if expected is None or got is None:
            assert (expected is None or not expected.abs().sum()) and (got is None or not got.abs().sum()), parameter
            continue
        largest = max(largest, (got - expected).abs().max().item())
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=parameter)
    print(f"{name}: max |harness - own loop| = {largest:.3g}")
    if name == "frozen_embeddings":
        assert all(own[n] is None for n, _ in model.named_parameters() if "embeddings" in n)


def test_regularisers_need_task_inputs_and_fp16_is_refused_with_one_line(real_step):
    model, batches = real_step
    step = mtlbench.StrategyStep(tasks=list(batches), shared=model.encoder.parameters(), regularizers=["fgm"])
    with pytest.raises(mtlbench.UserError, match="regularisers need TaskInputs"):
        step.backward({t: model(t, b).loss for t, b in batches.items()})
    with pytest.raises(mtlbench.UserError, match="fp32 or bf16"):
        mtlbench.StrategyStep(tasks=["a"], shared=[], precision="fp16")
    with pytest.raises(mtlbench.UserError, match="combiner: unknown combiner 'pcgard'.*pcgrad"):
        mtlbench.StrategyStep(tasks=["a", "b"], shared=[], combiner="pcgard")
