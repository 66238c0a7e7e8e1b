"""Freezing schedules on real training steps: exactly the intended parameters stay bit-for-bit
unchanged (weight decay on), learning rates per layer, and the trainable set over time."""

import pytest
import torch
from mtlbench.bench.step import Strategies, make_optimizer, training_step
from mtlbench.strategies import registry


def build(model, name, **options):
    cls = registry.get("freezing", name)
    return cls(registry.make_options(cls, options, "test"), model)


def strategies_with(model, freezing, combiner="sum"):
    cls = registry.get("combiner", combiner)
    return Strategies(None, cls(cls.Options(), list(model.specs), torch.Generator().manual_seed(0)), [], freezing)


def train_steps(model, batches, freezing, steps=3, combiner="sum", epoch=1):
    """`steps` joint steps with AdamW (weight decay 0.1); returns the parameters before and after."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = make_optimizer(freezing.parameter_groups(1e-2, 0.1))  # what the trainer uses
    freezing.on_epoch_start(epoch)
    for step in range(steps):
        freezing.on_step(step)
        training_step(model, strategies_with(model, freezing, combiner), batches, optimizer)
    return before, {n: p.detach() for n, p in model.named_parameters()}


def unchanged(before, after):
    return {n for n in before if torch.equal(before[n], after[n])}


@pytest.mark.parametrize("combiner", ["sum", "pcgrad"])
def test_frozen_backbone_trains_heads_only(real_step, combiner):
    model, batches = real_step
    before, after = train_steps(model, batches, build(model, "frozen_backbone"), combiner=combiner)
    frozen = unchanged(before, after)
    encoder = {n for n in before if not n.startswith("heads.")}
    assert encoder <= frozen  # bit-for-bit, weight decay included
    assert not ({n for n in before if n.startswith("heads.")} & frozen)


def test_frozen_embeddings_keep_every_embedding_table(real_step):
    model, batches = real_step
    before, after = train_steps(model, batches, build(model, "frozen_embeddings"))
    frozen = unchanged(before, after)
    embeddings = {n for n in before if "embeddings" in n}
    assert embeddings and embeddings <= frozen
    # everything else moved (the pooler is unused with mean pooling, so it has no gradient)
    assert frozen - embeddings <= {n for n in before if ".pooler." in n}


def test_gradual_unfreezing_opens_one_layer_per_epoch_from_the_top(real_step):
    model, batches = real_step
    schedule = build(model, "gradual_unfreezing")
    layers = schedule.num_layers()
    assert layers == 3
    for epoch in range(1, layers + 2):
        before, after = train_steps(model, batches, schedule, steps=2, epoch=epoch)
        moved_layers = {schedule.layer_index(n) for n in before if n not in unchanged(before, after)} - {None}
        assert moved_layers == set(range(layers - epoch, layers)) - {-1}
        embeddings_moved = any("embeddings" in n and not torch.equal(before[n], after[n]) for n in before)
        assert embeddings_moved == (epoch == layers + 1)


def test_frozen_head_alternates_between_the_named_heads(real_step):
    model, batches = real_step
    schedule = build(model, "frozen_head", alternate=["quora", "sts"])
    for epoch, (training, resting) in enumerate([("quora", "sts"), ("sts", "quora"), ("quora", "sts")], 1):
        before, after = train_steps(model, batches, schedule, steps=2, epoch=epoch)
        frozen = unchanged(before, after)
        assert {n for n in before if n.startswith(f"heads.{resting}.")} <= frozen  # optimizer state kept still
        assert not ({n for n in before if n.startswith(f"heads.{training}.")} & frozen)
        assert not ({n for n in before if n.startswith("heads.sst.")} & frozen)  # not in the rotation


def test_frozen_head_rejects_unknown_tasks(real_step):
    from mtlbench.tasks.errors import UserError
    model, _ = real_step
    with pytest.raises(UserError, match="unknown task 'qora'.*did you mean 'quora'"):
        build(model, "frozen_head", alternate=["qora", "sts"])


def test_layerwise_lr_decay_scales_each_layer_from_the_top(real_step):
    model, _ = real_step
    schedule = build(model, "layerwise_lr_decay", decay=0.5)
    lr_of = {}
    for group in schedule.parameter_groups(1.0, 0.01):
        for parameter in group["params"]:
            lr_of[id(parameter)] = group["lr"]
    names = dict(model.named_parameters())
    assert lr_of[id(names["heads.sst.weight" if "heads.sst.weight" in names else next(
        n for n in names if n.startswith("heads.sst."))])] == 1.0
    for i in range(3):
        layer = next(n for n in names if f".layer.{i}." in n)
        assert lr_of[id(names[layer])] == 0.5 ** (3 - i)
    assert lr_of[id(names[next(n for n in names if "word_embeddings" in n)])] == 0.5 ** 4
    assert all(p.requires_grad for p in model.parameters())


def test_run_records_which_parameters_trained_when(tmp_path):
    import json

    from mtlbench.bench.cli import main

    from tests.conftest import write_suite
    recipes = ('[[recipes]]\nname = "gu"\nsampler = "round_robin"\n'
               'freezing = { name = "gradual_unfreezing", every_steps = 5 }\n')
    suite = write_suite(tmp_path / "s.toml", recipes)
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    trainable = json.loads((tmp_path / "out" / "tiny-test.gu-seed0.json").read_text())["strategies"]["freezing"]["trainable"]
    assert [entry["step"] for entry in trainable] == [0, 5, 10, 15]
    assert all(name.startswith("heads.") or ".layer.2." in name or ".pooler." in name for name in trainable[0]["names"])
    assert any("word_embeddings" in name for name in trainable[-1]["names"])
    assert trainable[-1]["parameters"] == sum(1 for _ in trainable[-1]["names"])
