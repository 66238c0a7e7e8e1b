"""FGSM, FGM and PGD perturbations against their definitions on small tensors, and an adversarial
training step against plain autograd on the same total loss."""

import pytest
import torch
from mtlbench.strategies import registry
from mtlbench.strategies.adversarial import fgm_perturbation, fgsm_perturbation, pgd_perturbation, project

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])  # two examples, padded to 4 tokens


def gradient(seed=0):
    return torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def per_example_norm(r):
    return r.flatten(1).norm(dim=1)


def test_fgm_has_norm_epsilon_along_the_gradient_and_spares_padding():
    g = gradient()
    r = fgm_perturbation(g, MASK, 0.7)
    torch.testing.assert_close(per_example_norm(r), torch.full((2,), 0.7, dtype=torch.float64))
    assert (r[0, 3] == 0).all() and (r[1, 2:] == 0).all()
    real = g * MASK[..., None]
    for i in range(2):  # same direction as the gradient on the real tokens: cosine 1
        cos = (r[i].flatten() @ real[i].flatten()) / (r[i].norm() * real[i].norm())
        assert cos.item() == pytest.approx(1.0)


def test_fgsm_is_epsilon_times_the_sign_on_real_tokens():
    g = gradient(1)
    r = fgsm_perturbation(g, MASK, 0.05)
    torch.testing.assert_close(r, 0.05 * g.sign() * MASK[..., None])
    assert set(r.unique().tolist()) <= {-0.05, 0.0, 0.05}


def test_zero_gradient_gives_zero_perturbation():
    assert fgm_perturbation(torch.zeros(2, 4, 3), MASK, 1.0).abs().sum() == 0


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_stays_inside_the_ball_and_never_touches_padding(norm):
    torch.manual_seed(0)
    weights = torch.randn(2, 4, 3, dtype=torch.float64)

    def gradient_at(delta):  # a non-linear loss: the gradient moves with delta
        return torch.cos(weights * 3 + delta * 5)

    delta = pgd_perturbation(gradient_at, gradient_at(torch.zeros(2, 4, 3, dtype=torch.float64)), MASK,
                             epsilon=0.5, alpha=0.4, steps=6, norm=norm)
    if norm == "l2":
        assert (per_example_norm(delta) <= 0.5 + 1e-9).all()
    else:
        assert delta.abs().max() <= 0.5 + 1e-12
    assert (delta[0, 3] == 0).all() and (delta[1, 2:] == 0).all()


def test_pgd_on_a_linear_loss_reaches_the_ball_boundary_along_the_gradient():
    g = gradient(2)
    delta = pgd_perturbation(lambda d: g, g, MASK, epsilon=1.0, alpha=0.3, steps=5)
    torch.testing.assert_close(delta, fgm_perturbation(g, MASK, 1.0))  # the L2 maximiser of <g, delta>
    one_step = pgd_perturbation(lambda d: g, g, MASK, epsilon=1.0, alpha=0.3, steps=1)
    torch.testing.assert_close(one_step, fgm_perturbation(g, MASK, 0.3))


def test_projection_scales_only_examples_outside_the_ball():
    delta = torch.zeros(2, 4, 3)
    delta[0, 0, 0], delta[1, 0, 0] = 3.0, 0.5
    projected = project(delta, MASK, 1.0)
    assert projected[0, 0, 0].item() == pytest.approx(1.0) and projected[1, 0, 0].item() == pytest.approx(0.5)


def make(name, **options):
    cls = registry.get("regularizer", name)
    return cls(registry.make_options(cls, options, "test"), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name, options, passes", [("fgm", {"epsilon": 0.5}, 1), ("fgsm", {"epsilon": 0.01}, 1),
                                                   ("pgd", {"epsilon": 0.5, "alpha": 0.2, "steps": 3}, 3)])
def test_adversarial_step_gradient_equals_autograd_on_the_total_loss(real_step, name, options, passes):
    """The trainer reuses the clean backward for the input gradient; the parameters' gradients
    must still be exactly those of L + L_adv, and the passes are counted."""
    from mtlbench.bench.step import regularized_loss
    from mtlbench.strategies.base import TaskStep

    model, batches = real_step
    regularizer = make(name, **options)
    task, batch = "quora", batches["quora"]
    parameters = model.shared_parameters() + model.task_parameters()[task]

    loss, clean = regularized_loss(model, [regularizer], task, batch)
    got = torch.autograd.grad(loss, parameters, allow_unused=True)
    assert regularizer.extra_forward_passes == passes and regularizer.extra_backward_passes == passes

    # By hand: the same perturbation from a fresh regulariser, then autograd on L + L_adv.
    twin = make(name, **options)
    embeddings = model.input_embeddings(batch["input_ids"])
    leaf = embeddings.detach().requires_grad_(True)
    clean_loss = model(task, batch, inputs_embeds=leaf).loss
    outputs = model.outputs_closure(task, batch)
    step = TaskStep(task=task, loss=clean_loss, pooled=None, labels=batch["labels"], input_embeddings=leaf,
                    padding_mask=batch["attention_mask"], loss_from_embeddings=lambda e: outputs(e)[0],
                    input_gradient=lambda: torch.autograd.grad(clean_loss, leaf, retain_graph=True)[0])
    r = twin.perturbation(step).detach()
    total = model(task, batch, inputs_embeds=embeddings).loss + model(task, batch, inputs_embeds=embeddings + r).loss
    expected = torch.autograd.grad(total, parameters, allow_unused=True)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None or g.abs().sum() == 0
        else:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)
    assert clean.item() == pytest.approx(clean_loss.item(), rel=1e-6)


def test_fgm_with_a_term_on_the_clean_graph_keeps_that_graph(real_step):
    """FGM alone frees the clean graph after the input gradient; with the contrastive term, which
    backpropagates through the clean pooled vectors, the graph is kept and the gradient is that
    of L + L_adv + L_contrastive."""
    from mtlbench.bench.step import regularized_loss
    from mtlbench.strategies.regularizers.contrastive import positive_pairs, supervised_contrastive_loss

    model, batches = real_step
    task, batch = "quora", batches["quora"]
    parameters = model.shared_parameters() + model.task_parameters()[task]
    fgm, contrastive = make("fgm", epsilon=0.5), make("contrastive", weight=0.3)
    loss, _ = regularized_loss(model, [fgm, contrastive], task, batch)
    got = torch.autograd.grad(loss, parameters, allow_unused=True)

    embeddings = model.input_embeddings(batch["input_ids"])
    clean = model(task, batch, inputs_embeds=embeddings)
    gradient = torch.autograd.grad(clean.loss, embeddings, retain_graph=True)[0]
    r = make("fgm", epsilon=0.5).perturbation(_gradient_only_step(batch, gradient)).detach()
    half = batch["labels"].shape[0]
    positive = positive_pairs(batch["labels"], model.specs[task].kind, 4.0)
    total = (clean.loss + model(task, batch, inputs_embeds=embeddings + r).loss
             + 0.3 * supervised_contrastive_loss(clean.pooled[:half], clean.pooled[half:], positive))
    expected = torch.autograd.grad(total, parameters, allow_unused=True)
    for g, e in zip(got, expected):
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def _gradient_only_step(batch, gradient):
    from mtlbench.strategies.base import TaskStep

    return TaskStep(task="quora", loss=None, pooled=None, labels=batch["labels"], input_embeddings=None,
                    padding_mask=batch["attention_mask"], loss_from_embeddings=None,
                    input_gradient=lambda: gradient)


def _recording_step(model, batches, task="quora"):
    """A TaskStep built like the trainer's, whose closures record every embedding point they see."""
    from mtlbench.bench.step import CleanBackward
    from mtlbench.strategies.base import TaskStep

    batch = batches[task]
    embeddings = model.input_embeddings(batch["input_ids"])
    output = model(task, batch, inputs_embeds=embeddings)
    parameters = model.shared_parameters() + model.task_parameters()[task]
    outputs = model.outputs_closure(task, batch)
    points = []

    def recorded(e):
        points.append(e.detach().clone())
        return outputs(e)

    step = TaskStep(task=task, loss=output.loss, pooled=output.pooled, labels=batch["labels"],
                    input_embeddings=embeddings, padding_mask=batch["attention_mask"],
                    loss_from_embeddings=lambda e: recorded(e)[0], spec=model.specs[task], logits=output.logits,
                    outputs_from_embeddings=recorded,
                    input_gradient=CleanBackward(output.loss, embeddings, parameters, retain_graph=True).input_gradient,
                    parameters=parameters)
    return step, points, embeddings.detach(), outputs


def test_freelb_trains_on_the_mean_loss_of_its_points_inside_the_ball(real_step):
    model, batches = real_step
    step, points, clean, outputs = _recording_step(model, batches)
    regularizer = make("freelb", steps=3, alpha=0.5, epsilon=0.4, init_magnitude=0.1)
    term = regularizer.terms(step)["adversarial"]
    assert len(points) == 3 and regularizer.extra_forward_passes == 3 == regularizer.extra_backward_passes
    mask = step.padding_mask[..., None]
    for point in points:
        delta = point - clean
        assert (per_example_norm(delta) <= 0.4 + 1e-6).all() and (delta * (1 - mask)).abs().sum() == 0
    assert per_example_norm(points[0] - clean).max() <= 0.1 + 1e-6  # the random start is small
    # Exactly the gradient of (1/K) sum_t L(e + delta_t), word embeddings included.
    by_hand = sum(outputs(step.input_embeddings + (p - clean))[0] for p in points) / 3
    torch.testing.assert_close(term, by_hand.detach(), rtol=1e-5, atol=1e-7)
    got = torch.autograd.grad(term, step.parameters, allow_unused=True, retain_graph=True)
    expected = torch.autograd.grad(by_hand, step.parameters, allow_unused=True)
    for g, e in zip(got, expected):
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_symmetric_divergence_definitions():
    from mtlbench.strategies.regularizers.smart import symmetric_divergence
    from mtlbench.tasks.spec import TaskKind

    a, b = torch.tensor([[0.3], [-1.0]]), torch.tensor([[1.2], [0.4]])
    logits = torch.randn(4, 5)
    assert symmetric_divergence(logits, logits + 3.0, TaskKind.SINGLE_CLASSIFICATION, 5).item() == pytest.approx(0.0, abs=1e-6)
    one_logit = symmetric_divergence(a, b, TaskKind.PAIR_CLASSIFICATION, 1)
    p, q = torch.sigmoid(a), torch.sigmoid(b)
    kl = lambda x, y: (x * (x / y).log() + (1 - x) * ((1 - x) / (1 - y)).log()).mean()
    assert one_logit.item() == pytest.approx((kl(p, q) + kl(q, p)).item(), rel=1e-5)
    # One logit z is the Bernoulli(sigmoid(z)), i.e. the two-class softmax over [0, z].
    softmax_form = symmetric_divergence(torch.cat([0 * a, a], -1), torch.cat([0 * b, b], -1),
                                        TaskKind.SINGLE_CLASSIFICATION, 2)
    assert softmax_form.item() == pytest.approx(one_logit.item(), rel=1e-5)
    assert symmetric_divergence(a, b, TaskKind.PAIR_REGRESSION, 1).item() == pytest.approx(((a - b) ** 2).mean().item())


@pytest.mark.parametrize("task", ["sst", "quora", "sts"])
def test_smart_perturbs_real_tokens_at_epsilon_per_token(real_step, task):
    model, batches = real_step
    step, points, clean, _ = _recording_step(model, batches, task)
    regularizer = make("smart", epsilon=1e-3, steps=2)
    term = regularizer.terms(step)["smoothness"]
    assert len(points) == 3 and regularizer.extra_forward_passes == 3
    final = points[-1] - clean
    real = step.padding_mask.bool()
    torch.testing.assert_close(final.abs().amax(-1)[real], torch.full((int(real.sum()),), 1e-3), rtol=1e-3, atol=1e-9)
    assert final[~real].abs().sum() == 0
    assert term.item() >= 0 and term.requires_grad


def test_a_zero_weight_adversarial_term_leaves_the_training_step_unchanged(real_step):
    """The regularised path (clean forward from embeddings, stored-gradient surrogate) must update
    the parameters as plain training does, up to float rounding."""
    import copy

    from mtlbench.bench.step import Strategies, make_optimizer, training_step

    model, batches = real_step
    twin = copy.deepcopy(model)
    combiner_cls = registry.get("combiner", "pcgrad")
    updated = []
    for net, regularizers in ((model, []), (twin, [make("fgm", epsilon=0.1, weight=0.0)])):
        freezing = registry.get("freezing", "none")(registry.get("freezing", "none").Options(), net)
        strategies = Strategies(None, combiner_cls(combiner_cls.Options(), list(net.specs), torch.Generator().manual_seed(0)),
                                regularizers, freezing)
        optimizer = make_optimizer(freezing.parameter_groups(1e-3, 0.01))
        for _ in range(2):
            training_step(net, strategies, batches, optimizer)
        updated.append(dict(net.named_parameters()))
    for name, parameter in updated[0].items():
        torch.testing.assert_close(parameter, updated[1][name], rtol=1e-5, atol=1e-6, msg=name)


class _GradientCapture:
    """An optimizer stand-in: keeps the gradients training_step leaves, changes nothing."""

    def __init__(self, model):
        self.model, self.grads = model, None

    def step(self):
        self.grads = {name: None if p.grad is None else p.grad.clone() for name, p in self.model.named_parameters()}

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("combiner, options", [("sum", {}), ("weighted", {"weights": {"sst": 0.0, "quora": 0.5, "sts": 2.0}})])
@pytest.mark.parametrize("regularizers", [("fgm",), ("fgsm",), ("pgd",), ("freelb",), ("smart",), ("contrastive",),
                                          ("fgm", "contrastive")])
def test_fixed_weight_combiners_get_the_same_gradients_with_the_clean_backward_in_grad(real_step, combiner,
                                                                                      options, regularizers):
    """With fixed loss weights each task's w * (L + terms) goes into .grad before the combiner runs,
    the clean backward included (the textbook FGM step); the step's gradients must equal those of
    the stored-gradient path, which is checked against autograd on L + L_adv above. A zero weight
    falls back to that path."""
    from mtlbench.bench.step import Strategies, training_step

    model, batches = real_step
    combiner_cls = registry.get("combiner", combiner)
    captured = []
    for fixed in (True, False):
        instance = combiner_cls(registry.make_options(combiner_cls, options, "test"), list(model.specs),
                                torch.Generator().manual_seed(0))
        assert instance.fixed_loss_weights() is not None
        if not fixed:
            instance.fixed_loss_weights = lambda: None
        freezing = registry.get("freezing", "none")(registry.get("freezing", "none").Options(), model)
        strategies = Strategies(None, instance, [make(name) for name in regularizers], freezing)
        capture = _GradientCapture(model)
        losses = training_step(model, strategies, batches, capture, max_grad_norm=None)
        captured.append((capture.grads, losses))
    (direct, direct_losses), (stored, stored_losses) = captured
    assert direct.keys() == stored.keys() and sum(g is not None for g in direct.values()) > 10
    for name, g in direct.items():
        if stored[name] is None:
            assert g is None or g.abs().sum() == 0, name
        else:
            torch.testing.assert_close(g, stored[name], rtol=1e-5, atol=1e-7, msg=name)
    for task in batches:
        assert direct_losses[task].item() == stored_losses[task].item()


@pytest.mark.parametrize("weight", [None, 1.0, 0.25, 3.0])
def test_the_input_gradient_is_that_of_the_unweighted_clean_loss(real_step, weight):
    from mtlbench.bench.step import CleanBackward

    model, batches = real_step
    batch = batches["sts"]
    embeddings = model.input_embeddings(batch["input_ids"])
    loss = model("sts", batch, inputs_embeds=embeddings).loss
    expected = torch.autograd.grad(loss, embeddings, retain_graph=True)[0]
    parameters = model.shared_parameters() + model.task_parameters()["sts"]
    got = CleanBackward(loss, embeddings, parameters, retain_graph=False, weight=weight).input_gradient()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("others", [("freelb",), ("smart",), ("contrastive", "pgd")])
def test_fgm_composes_with_other_regularizers_in_one_step(real_step, others):
    """Whether the clean graph is freed early depends on every regulariser of the step; any mix
    must backpropagate (SMART's term goes through the clean logits, FreeLB's does not)."""
    from mtlbench.bench.step import regularized_loss

    model, batches = real_step
    loss, _ = regularized_loss(model, [make("fgm", epsilon=0.1), *[make(name) for name in others]], "sts",
                                batches["sts"])
    loss.backward()
    grads = [p.grad for p in model.shared_parameters() if p.grad is not None]
    assert model.encoder.get_input_embeddings().weight.grad is not None and len(grads) > 10
    assert all(torch.isfinite(g).all() for g in grads)
    model.zero_grad(set_to_none=True)
