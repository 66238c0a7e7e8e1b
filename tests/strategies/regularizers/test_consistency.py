"""R3F and R-Drop against their papers' objectives, computed by hand on a real model step: the
parameters' gradients of the regularised loss equal autograd's on the paper's total."""

import pytest
import torch
from mtlbench.bench.step import regularized_loss
from mtlbench.strategies import registry
from mtlbench.strategies.regularizers.smart import symmetric_divergence


def make(name, **options):
    cls = registry.get("regularizer", name)
    return cls(registry.make_options(cls, options, "test"), torch.Generator().manual_seed(0))


def gradients(loss, parameters):
    return [torch.zeros_like(p) if g is None else g
            for p, g in zip(parameters, torch.autograd.grad(loss, parameters, allow_unused=True))]


@pytest.mark.parametrize("task", ["sst", "quora", "sts"])
@pytest.mark.parametrize("noise", ["normal", "uniform"])
def test_r3f_is_the_symmetric_kl_between_clean_and_noised_embedding_predictions(real_step, task, noise):
    model, batches = real_step  # eval mode: no dropout, so only the noise differs
    batch, spec = batches[task], model.specs[task]
    parameters = model.shared_parameters() + model.task_parameters()[task]
    regularizer = make("r3f", sigma=1e-2, noise=noise, weight=0.7)
    loss, _ = regularized_loss(model, [regularizer], task, batch)
    got = gradients(loss, parameters)
    assert (regularizer.extra_forward_passes, regularizer.extra_backward_passes) == (1, 1)

    twin = make("r3f", sigma=1e-2, noise=noise)
    embeddings = model.input_embeddings(batch["input_ids"])
    draw = twin.noise_like(embeddings) * batch["attention_mask"].unsqueeze(-1)
    assert draw.abs().max() <= (1e-2 if noise == "uniform" else 1.0)
    assert draw[batch["attention_mask"] == 0].abs().sum() == 0  # padding untouched
    clean = model(task, batch, inputs_embeds=embeddings)
    noised = model(task, batch, inputs_embeds=embeddings + draw)
    total = clean.loss + 0.7 * symmetric_divergence(noised.logits, clean.logits, spec.kind, spec.num_labels)
    for g, e in zip(got, gradients(total, parameters)):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)


def test_r3f_without_noise_adds_nothing(real_step):
    model, batches = real_step
    loss, clean = regularized_loss(model, [make("r3f", sigma=0.0)], "sst", batches["sst"])
    assert loss.item() == pytest.approx(clean.item(), rel=1e-6)


@pytest.mark.parametrize("task", ["sst", "sts"])
def test_rdrop_adds_the_second_pass_loss_and_half_the_symmetric_kl(real_step, task):
    model, batches = real_step
    model.train()  # dropout 0.1: two passes, two masks
    batch, spec = batches[task], model.specs[task]
    parameters = model.shared_parameters() + model.task_parameters()[task]
    torch.manual_seed(3)
    loss, _ = regularized_loss(model, [make("rdrop", alpha=0.5)], task, batch)
    got = gradients(loss, parameters)

    torch.manual_seed(3)  # the same two dropout masks, in the same order
    embeddings = model.input_embeddings(batch["input_ids"])
    first = model(task, batch, inputs_embeds=embeddings)
    second = model(task, batch, inputs_embeds=embeddings)
    assert not torch.allclose(first.logits, second.logits)
    total = first.loss + second.loss + 0.5 * symmetric_divergence(second.logits, first.logits, spec.kind,
                                                                  spec.num_labels) / 2
    for g, e in zip(got, gradients(total, parameters)):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)


def test_rdrop_without_dropout_is_twice_the_loss_and_no_consistency_term(real_step):
    model, batches = real_step  # eval mode
    loss, clean = regularized_loss(model, [make("rdrop")], "quora", batches["quora"])
    assert loss.item() == pytest.approx(2 * clean.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["r3f", "rdrop"])
@pytest.mark.parametrize("combiner", ["sum", "pcgrad", "uw", "nash_mtl"])
def test_the_consistency_regularisers_compose_with_combiners_in_a_step(real_step, name, combiner):
    from mtlbench.bench.step import Strategies, make_optimizer, training_step
    model, batches = real_step
    model.train()
    tasks = list(batches)
    freezing = registry.build("freezing", "none", {}, model)
    strategies = Strategies(None, registry.build("combiner", combiner, {}, tasks, torch.Generator().manual_seed(0)),
                            [make(name)], freezing)
    optimizer = make_optimizer(freezing.parameter_groups(1e-3, 0.0) + strategies.combiner.optimizer_groups(1e-3, "cpu"))
    before = [p.detach().clone() for p in model.shared_parameters()]
    losses = training_step(model, strategies, batches, optimizer)
    assert set(losses) == set(tasks) and all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.shared_parameters()))
    assert strategies.regularizers[0].summary()["extra_forward_passes"] == len(tasks)
