"""The conflict probe (bench.conflict_probe): its cosines against an independent computation, a
case with a known answer, that it leaves the run as it was, and that the plot shows the sum
baseline beside the gradient combiners."""

import copy
import dataclasses
import math

import pytest
import torch
from mtlbench.bench import conflict_probe
from mtlbench.bench.config import Recipe, StrategySpec
from mtlbench.bench.context import build_strategies
from mtlbench.bench.data import Encoding, TaskBatches, tokenize
from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.settings import TrainSettings
from mtlbench.bench.trainer import RunParts, TrainingLoop
from mtlbench.tasks.builtin import SST, STS
from mtlbench.tasks.synthetic import SyntheticConfig, generate


def _two_tasks(tokenizer, cache, rows=48):
    config = SyntheticConfig(sst_train=rows, sts_train=rows, sst_dev=16, sts_dev=16)
    train, dev = {}, {}
    for spec, mode in ((SST, "single"), (STS, "bi")):
        split = generate(spec.name, config).rows
        train[spec.name] = tokenize(split["train"], tokenizer, Encoding(mode, 32), cache)
        dev[spec.name] = tokenize(split["dev"], tokenizer, Encoding(mode, 32), cache)
    return train, dev


def _batches(train, tokenizer, seed=0):
    generator = torch.Generator().manual_seed(seed)
    specs = {"sst": SST, "sts": STS}
    return {t: TaskBatches(d, specs[t], 16, tokenizer.pad_token_id, generator) for t, d in train.items()}


def _oracle_cosine(model, draw):
    """Each task's gradient by a plain backward into .grad, flattened in float64."""
    vectors = []
    shared = model.shared_parameters()
    for task, batch in draw.items():
        model.zero_grad(set_to_none=True)
        model(task, batch).loss.backward()
        vectors.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                                  for p in shared]))
    model.zero_grad(set_to_none=True)
    a, b = vectors
    return float(a @ b / (a.norm() * b.norm()))


def test_probe_cosines_match_a_plain_backward_and_the_probe_draws_the_same_rows(encoder, tokenizer, tmp_path):
    train, _ = _two_tasks(tokenizer, tmp_path)
    model = MultiTaskModel(encoder, [SST, STS], "mean", "concat_product")
    draws = conflict_probe.probe_batches(_batches(train, tokenizer))
    assert len(draws) == 3  # 48 rows, batches of 16: three draws, not the four asked
    assert [d["sst"]["input_ids"].tolist() for d in draws] == \
        [d["sst"]["input_ids"].tolist() for d in conflict_probe.probe_batches(_batches(train, tokenizer, seed=5))]
    found = conflict_probe.gradient_cosines(model, draws, torch.device("cpu"))
    assert list(found) == ["sst|sts"] and len(found["sst|sts"]) == 3
    model.eval()
    for value, draw in zip(found["sst|sts"], draws):
        assert value == pytest.approx(_oracle_cosine(model, draw), abs=1e-5)
    assert all(p.grad is None for p in model.parameters())  # the probe itself leaves no gradient


def test_two_tasks_with_the_same_head_and_data_have_cosine_one(encoder, tokenizer, tmp_path):
    """Known answer: the same loss twice gives the same gradient, cos = 1 (and in float64 too)."""
    train, _ = _two_tasks(tokenizer, tmp_path)
    twin = dataclasses.replace(SST, name="sst2")
    model = MultiTaskModel(encoder, [SST, twin], "mean", "concat_product")
    model.heads["sst2"].load_state_dict(model.heads["sst"].state_dict())
    source = _batches({"sst": train["sst"]}, tokenizer)["sst"]
    for dtype in (torch.float32, torch.float64):
        model.to(dtype)
        draws = [{"sst": d["sst"], "sst2": d["sst"]} for d in conflict_probe.probe_batches({"sst": source, "x": source})]
        found = conflict_probe.gradient_cosines(model, draws, torch.device("cpu"))
        assert found["sst|sst2"] == pytest.approx([1.0] * len(draws), abs=1e-6)


def _loop(encoder, tokenizer, tmp_path, probe: bool):
    train, dev = _two_tasks(tokenizer, tmp_path)
    torch.manual_seed(0)
    model = MultiTaskModel(copy.deepcopy(encoder), [SST, STS], "mean", "concat_product")
    batches = _batches(train, tokenizer)
    recipe = Recipe("sum", StrategySpec.make("sampler", "round_robin"), StrategySpec.make("combiner", "sum"), (),
                    StrategySpec.make("freezing", "none"), "mean", "concat_product")
    parts = RunParts(model, build_strategies(recipe, model, batches, 0), batches, dev, pad_id=tokenizer.pad_token_id)
    loop = TrainingLoop(parts, TrainSettings(epochs=2, lr=1e-3, dropout=0.1), torch.device("cpu"))
    if not probe:
        loop.probe = []
    torch.manual_seed(1)  # dropout: the same draws in both runs unless the probe takes some
    return loop.run(), model


def test_the_probe_leaves_the_run_unchanged_and_is_recorded_per_epoch(encoder, tokenizer, tmp_path):
    with_probe, model_a = _loop(encoder, tokenizer, tmp_path, probe=True)
    without, model_b = _loop(encoder, tokenizer, tmp_path, probe=False)
    for a, b in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [e["dev"] for e in with_probe.history] == [e["dev"] for e in without.history]
    assert all("gradient_cosines" not in e for e in without.history)
    cosines = [e["gradient_cosines"]["sst|sts"] for e in with_probe.history]
    assert len(cosines) == 2 and all(len(c) == 3 and all(-1 <= v <= 1 for v in c) for c in cosines)
    summary = conflict_probe.summarise(with_probe.history)["sst|sts"]
    flat = [v for c in cosines for v in c]
    assert summary["probes"] == 6
    assert summary["mean_cosine"] == pytest.approx(sum(flat) / 6)
    assert summary["negative_cosine_fraction"] == sum(v < 0 for v in flat) / 6
    assert math.isfinite(summary["mean_cosine"])


def test_the_probes_memory_is_not_charged_to_the_runs_peak(encoder, tokenizer, tmp_path, monkeypatch):
    """The probe holds T gradient rows (1.3 GB for BERT-base and three tasks): not the recipe's
    memory. A probe that takes 400 MB leaves the recorded peak where a probe that takes none does."""
    import time

    def hungry(model, draws, device):
        block = torch.ones(100 * 2**20)  # 400 MB, touched
        time.sleep(0.2)  # long enough for the sampler to see it, were it sampling
        del block
        return {}

    light, _ = _loop(encoder, tokenizer, tmp_path, probe=True)
    monkeypatch.setattr(conflict_probe, "gradient_cosines", hungry)
    heavy, _ = _loop(encoder, tokenizer, tmp_path, probe=True)
    assert heavy.memory["peak_memory_mb"] < light.memory["peak_memory_mb"] + 100
