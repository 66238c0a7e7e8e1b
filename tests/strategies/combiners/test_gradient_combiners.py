"""CAGrad, IMTL-G, Aligned-MTL, GradVac and RLW against their papers' math on small tensors, and every
gradient combiner on a real model step against its pure function applied by hand."""

import itertools
import math

import numpy as np
import pytest
import torch
from mtlbench.strategies import registry
from mtlbench.strategies.base import IDENTITY_PIPELINE
from mtlbench.strategies.combiners.aligned_mtl import aligned_mtl_weights
from mtlbench.strategies.combiners.cagrad import cagrad_weights
from mtlbench.strategies.combiners.gradvac import gradvac_weights
from mtlbench.strategies.combiners.imtl_g import imtl_g_weights
from mtlbench.strategies.combiners.pcgrad import pcgrad_weights
from mtlbench.strategies.combiners.rlw import rlw_weights
from mtlbench.strategies.gradients import GradientCombiner, LossWeightingCombiner, StepInfo, WindowMeans

from tests.conftest import gradients_by_hand


def random_gradients(tasks, dims, seed):
    return torch.randn(tasks, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def applied(weighting, gradients, *args, **kwargs):
    """A weighting's update `weights @ G` and its weights, from the gradients' Gramian."""
    weights = weighting(gradients @ gradients.T, *args, **kwargs)
    if isinstance(weights, tuple):
        weights = weights[0]
    return weights.to(gradients.dtype) @ gradients, weights


def cagrad(gradients, c=0.5, rescale=True):
    return applied(cagrad_weights, gradients, c, rescale)


def imtl_g(gradients):
    return applied(imtl_g_weights, gradients)


def aligned_mtl(gradients, scale="min"):
    return applied(aligned_mtl_weights, gradients, scale)


def gradvac(gradients, targets, beta=0.01, orders=None):
    weights, new_targets = gradvac_weights(gradients @ gradients.T, targets, beta, orders)
    return weights @ gradients, weights, new_targets


def random_orders(tasks, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(tasks, generator=generator).tolist() for _ in range(tasks)]


# --- CAGrad -------------------------------------------------------------------------------------

def worst_improvement(gradients, d):
    return (gradients @ d).min().item()


def test_cagrad_with_c_zero_is_gradient_descent_on_the_average_loss():
    gradients = random_gradients(3, 5, 0)
    update, weights = cagrad(gradients, c=0.0)
    torch.testing.assert_close(weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(update, gradients.mean(0))


@pytest.mark.parametrize("c", [0.2, 0.5, 0.8])
def test_cagrad_update_lies_on_the_ball_around_the_average_gradient(c):
    gradients = random_gradients(3, 6, 1)
    update, _ = cagrad(gradients, c=c, rescale=False)
    g0 = gradients.mean(0)
    assert (update - g0).norm().item() == pytest.approx(c * g0.norm().item(), rel=1e-6)
    update_rescaled, _ = cagrad(gradients, c=c, rescale=True)
    torch.testing.assert_close(update_rescaled, update / (1 + c * c))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cagrad_maximises_the_worst_task_improvement_in_the_ball(seed):
    """The primal problem, by brute force over a fine polar grid of the 2-D ball."""
    gradients = random_gradients(3, 2, 10 + seed)
    gradients[1] = -0.3 * gradients[0] + 0.2 * gradients[1]  # a conflicting pair
    c = 0.5
    update, _ = cagrad(gradients, c=c, rescale=False)
    g0 = gradients.mean(0)
    radius = c * g0.norm()
    angles = torch.linspace(0, 2 * math.pi, 20001, dtype=torch.float64)
    best = -math.inf
    for r in torch.linspace(0, 1, 51, dtype=torch.float64):
        ds = g0 + r * radius * torch.stack([angles.cos(), angles.sin()], 1)
        best = max(best, (ds @ gradients.T).min(1).values.max().item())
    assert worst_improvement(gradients, update) == pytest.approx(best, abs=1e-6)


def test_cagrad_zero_gradients_give_zero():
    update, weights = cagrad(torch.zeros(3, 4), c=0.5)
    assert torch.isfinite(weights).all() and update.abs().sum() == 0


# --- IMTL-G -------------------------------------------------------------------------------------

def literal_imtl_g(gradients):
    """The paper's closed form on the n-vectors: D, U and a matrix inverse."""
    units = gradients / gradients.norm(dim=1, keepdim=True)
    D = gradients[:1] - gradients[1:]
    U = units[:1] - units[1:]
    rest = gradients[0] @ U.T @ torch.linalg.inv(D @ U.T)
    weights = torch.cat([1 - rest.sum(0, keepdim=True), rest])
    return weights @ gradients, weights


@pytest.mark.parametrize("tasks", [2, 3, 4])
def test_imtl_g_projects_equally_on_every_unit_gradient(tasks):
    gradients = random_gradients(tasks, 8, tasks)
    update, weights = imtl_g(gradients)
    projections = gradients @ update / gradients.norm(dim=1)
    torch.testing.assert_close(projections, projections[:1].expand(tasks))
    assert weights.sum().item() == pytest.approx(1.0)
    expected_update, expected_weights = literal_imtl_g(gradients)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(update, expected_update)


def test_imtl_g_textbook_orthogonal_pair():
    # g1 = e1 (norm 1), g2 = 3 e2: a * 1 = (1 - a) * 3 gives a = 3/4.
    _, weights = imtl_g(torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(weights, torch.tensor([0.75, 0.25], dtype=torch.float64))


def test_imtl_g_degenerate_inputs_stay_finite():
    for gradients in (torch.zeros(3, 4), torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])):
        update, weights = imtl_g(gradients)
        assert torch.isfinite(update).all() and torch.isfinite(weights).all()


# --- Aligned-MTL --------------------------------------------------------------------------------

def aligned_rows(gradients, scale="min"):
    """B G: the aligned task gradients, with B rebuilt from the weights' definition."""
    gram = (gradients @ gradients.T).double()
    eigenvalues, vectors = torch.linalg.eigh(gram)
    keep = eigenvalues > eigenvalues.max() * len(gram) * torch.finfo(torch.float64).eps
    eigenvalues, vectors = eigenvalues[keep], vectors[:, keep]
    s = eigenvalues.sqrt().min()
    return s * (vectors / eigenvalues.sqrt()) @ vectors.T @ gradients.double(), s


@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_aligned_mtl_aligned_gradients_are_orthogonal_with_equal_norms(tasks):
    gradients = random_gradients(tasks, 10, 20 + tasks)
    aligned, s = aligned_rows(gradients)
    torch.testing.assert_close(aligned @ aligned.T, s ** 2 * torch.eye(tasks, dtype=torch.float64))
    update, _ = aligned_mtl(gradients)
    torch.testing.assert_close(update, aligned.sum(0))  # the update sums the aligned gradients
    assert torch.linalg.cond(aligned @ aligned.T).item() == pytest.approx(1.0)


def test_aligned_mtl_leaves_an_orthogonal_equal_norm_set_unchanged():
    gradients = 2.0 * torch.eye(3, dtype=torch.float64)
    update, weights = aligned_mtl(gradients)
    torch.testing.assert_close(weights, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(update, gradients.sum(0))


def test_aligned_mtl_rank_deficient_and_zero_gradients():
    gradients = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # rank 2
    _, weights = aligned_mtl(gradients)
    assert torch.isfinite(weights).all()
    aligned, s = aligned_rows(gradients)
    projector = gradients @ torch.linalg.pinv(gradients)  # onto the span of the rows' Gramian
    torch.testing.assert_close(aligned @ aligned.T, s ** 2 * projector)
    torch.testing.assert_close(aligned_mtl_weights(torch.zeros(3, 3)), torch.zeros(3, dtype=torch.float64))


def test_aligned_mtl_scales_order():
    gradients = random_gradients(3, 6, 3) * torch.tensor([[1.0], [3.0], [10.0]], dtype=torch.float64)
    norms = {scale: aligned_mtl(gradients, scale)[0].norm().item() for scale in ("min", "median", "rmse")}
    assert norms["min"] < norms["median"] < norms["rmse"]


# --- GradVac ------------------------------------------------------------------------------------

def test_gradvac_with_zero_targets_is_pcgrad_on_the_first_step():
    gradients = random_gradients(4, 6, 5)
    zero = [[0.0] * 4 for _ in range(4)]
    update, _, _ = gradvac(gradients, zero, beta=0.5, orders=random_orders(4, 3))
    expected, _ = applied(pcgrad_weights, gradients, random_orders(4, 3))
    torch.testing.assert_close(update, expected)


def test_gradvac_raises_a_low_cosine_exactly_to_its_target():
    g1, g2 = torch.tensor([1.0, 0.2], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    targets = [[0.0, 0.6], [0.6, 0.0]]
    phi = (g1 @ g2 / (g1.norm() * g2.norm())).item()
    assert phi < 0.6
    update, _, new_targets = gradvac(torch.stack([g1, g2]), targets, beta=0.25)
    # Row 1 (g2 vs g1) has cosine phi < 0.6 too, so both get lifted; rebuild g1' from the weights'
    # definition: g1' = g1 + w g2 with cos(g1', g2) = 0.6.
    w = g1.norm() * (0.6 * math.sqrt(1 - phi ** 2) - phi * math.sqrt(1 - 0.36)) / (g2.norm() * math.sqrt(1 - 0.36))
    adjusted = g1 + w * g2
    assert (adjusted @ g2 / (adjusted.norm() * g2.norm())).item() == pytest.approx(0.6)
    assert new_targets[0][1] == pytest.approx(0.75 * 0.6 + 0.25 * phi)  # EMA of the observed cosine
    w2 = g2.norm() * (0.6 * math.sqrt(1 - phi ** 2) - phi * math.sqrt(1 - 0.36)) / (g1.norm() * math.sqrt(1 - 0.36))
    torch.testing.assert_close(update, adjusted + g2 + w2 * g1)


def test_gradvac_leaves_pairs_above_target_unchanged():
    gradients = torch.tensor([[1.0, 0.1], [1.0, -0.1]], dtype=torch.float64)  # cosine ~0.98 > 0
    update, _, targets = gradvac(gradients, [[0.0, 0.0], [0.0, 0.0]], beta=1.0)
    torch.testing.assert_close(update, gradients.sum(0))
    assert targets[0][1] == pytest.approx(0.9802, abs=1e-4)  # beta = 1: the target is the last cosine


def test_gradvac_combiner_keeps_targets_per_task_pair():
    cls = registry.get("combiner", "gradvac")
    combiner = cls(cls.Options(beta=0.5), ["a", "b", "c"], torch.Generator().manual_seed(0))
    step = StepInfo(("c", "a"), torch.ones(2, dtype=torch.float64), torch.finfo(torch.float64).eps)  # rows c, a
    combiner.task_weights(torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64), step)
    assert combiner.targets[2][0] == pytest.approx(0.25) and combiner.targets[0][2] == pytest.approx(0.25)
    assert combiner.targets[0][1] == 0.0


# --- RLW ----------------------------------------------------------------------------------------

def test_rlw_weights_are_a_reproducible_softmax_of_normal_draws():
    draws = torch.stack([rlw_weights(3, g) for g in [torch.Generator().manual_seed(0)] for _ in range(4000)])
    torch.testing.assert_close(draws.sum(1), torch.ones(4000, dtype=torch.float64))
    assert (draws > 0).all()
    torch.testing.assert_close(draws.mean(0), torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.01, rtol=0)
    z = torch.randn(3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(rlw_weights(3, torch.Generator().manual_seed(7)), torch.softmax(z, 0))


def test_rlw_combiner_backward_is_the_weighted_gradient():
    gradients = random_gradients(3, 4, 0).float()
    shared = torch.nn.Parameter(torch.zeros(4))
    losses = {t: gradients[i] @ shared for i, t in enumerate("abc")}  # d L_t / d shared = g_t
    cls = registry.get("combiner", "rlw")
    combiner = cls(cls.Options(), list("abc"), torch.Generator().manual_seed(1))
    combiner.backward(losses, [shared], {}, IDENTITY_PIPELINE)
    weights = rlw_weights(3, torch.Generator().manual_seed(1))
    torch.testing.assert_close(shared.grad, weights.float() @ gradients)
    assert combiner.summary()["mean_weights"] == pytest.approx(dict(zip("abc", weights.tolist())))


# --- all gradient combiners ---------------------------------------------------------------------

def gradient_combiners():
    return sorted(name for name, cls in registry.available("combiner").items()
                  if issubclass(cls, (GradientCombiner, LossWeightingCombiner)))


def test_the_modern_family_is_registered_and_refuses_single_task_samplers():
    names = set(gradient_combiners())
    assert {"pcgrad", "mgda", "cagrad", "imtl_g", "aligned_mtl", "gradvac", "rlw", "uw", "dwa", "gradnorm",
            "nash_mtl", "famo", "upgrad", "graddrop", "db_mtl"} <= names
    for name in names:
        assert registry.get("combiner", name).needs_several_tasks


def weightings():
    """Every registered combiner whose update is `weights @ G` with weights it chooses."""
    from mtlbench.strategies.gradients import GramianWeighting
    return sorted(name for name, cls in registry.available("combiner").items()
                  if issubclass(cls, (GramianWeighting, LossWeightingCombiner)))


@pytest.mark.parametrize("name", weightings())
def test_combiner_on_a_real_model_step_equals_its_weights_applied_by_hand(real_step, name):
    model, batches = real_step
    shared, heads = model.shared_parameters(), model.task_parameters()
    by_hand, head_expected = gradients_by_hand(model, batches)

    cls = registry.get("combiner", name)
    twin = cls(cls.Options(), list(batches), torch.Generator().manual_seed(5))  # same state and draws
    losses = {t: model(t, b).loss for t, b in batches.items()}
    if issubclass(cls, LossWeightingCombiner):
        weights = twin.loss_weights(losses).double().detach()
    else:
        values = torch.stack([loss.detach() for loss in losses.values()]).double()
        weights = twin.task_weights(by_hand.double() @ by_hand.double().T,
                                    StepInfo(tuple(batches), values, torch.finfo(torch.float32).eps))
    combiner = cls(cls.Options(), list(batches), torch.Generator().manual_seed(5))
    combiner.backward(losses, shared, heads, IDENTITY_PIPELINE)
    got = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in shared])
    torch.testing.assert_close(got, weights.float() @ by_hand, rtol=1e-4, atol=1e-6)
    # a loss weighting (and GradNorm) scales the heads too; gradient methods leave them alone
    scales_heads = issubclass(cls, LossWeightingCombiner) or cls.weights_scale_heads
    for i, (task, grads) in enumerate(head_expected.items()):
        for parameter, grad in zip(heads[task], grads):
            torch.testing.assert_close(parameter.grad, weights[i].float() * grad if scales_heads else grad)
    assert combiner.summary()["weight_trajectory"]["step"] == [1]


def test_window_means_keep_a_small_trajectory_and_exact_means():
    log = WindowMeans(["a"], every=4)
    for value in range(10):
        log.add({"a": float(value)})
    trajectory = log.as_dict()
    assert trajectory == {"every": 4, "step": [4, 8, 10], "a": [1.5, 5.5, 8.5]}
    assert log.as_dict() == trajectory  # reading does not disturb the windows
    assert log.means() == {"a": 4.5}


def test_gradient_combiner_records_conflicts_and_trajectories():
    cls = registry.get("combiner", "pcgrad")
    combiner = cls(cls.Options(), ["a", "b"], torch.Generator().manual_seed(0))
    for sign in itertools.islice(itertools.cycle([1.0, -1.0]), 30):
        shared = torch.nn.Parameter(torch.zeros(2))
        losses = {"a": shared @ torch.tensor([1.0, 0.0]), "b": shared @ torch.tensor([sign, 1.0])}
        combiner.backward(losses, [shared], {}, IDENTITY_PIPELINE)
    summary = combiner.summary()
    assert summary["steps"] == 30
    assert summary["conflicts"]["a|b"]["negative_cosine_fraction"] == pytest.approx(0.5)
    assert summary["conflicts"]["a|b"]["mean_cosine"] == pytest.approx(0.0, abs=1e-6)
    assert summary["weight_trajectory"]["step"] == [25, 30]
    assert summary["cosine_trajectory"]["a|b"] == pytest.approx([np.mean([1, -1] * 12 + [1]) / math.sqrt(2),
                                                                 np.mean([-1, 1, -1, 1, -1]) / math.sqrt(2)])


def test_run_records_conflicts_and_weight_trajectories_and_plots_them(tmp_path):
    import json

    from mtlbench.bench.cli import main

    from tests.conftest import write_suite
    recipes = ('[[recipes]]\nname = "pc"\nsampler = "joint"\ncombiner = "pcgrad"\n'
               '[[recipes]]\nname = "rw"\nsampler = "joint"\ncombiner = "rlw"\n')
    suite = write_suite(tmp_path / "s.toml", recipes)
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    pc = json.loads((tmp_path / "out" / "tiny-test.pc-seed0.json").read_text())["strategies"]["combiner"]
    assert set(pc["conflicts"]) == {"sst|quora", "sst|sts", "quora|sts"}
    assert 0.0 <= pc["conflicts"]["sst|sts"]["negative_cosine_fraction"] <= 1.0
    assert pc["weight_trajectory"]["step"][-1] == pc["steps"] and len(pc["weight_trajectory"]["sts"]) >= 1
    rw = json.loads((tmp_path / "out" / "tiny-test.rw-seed0.json").read_text())["strategies"]["combiner"]
    assert "conflicts" not in rw and sum(rw["mean_weights"].values()) == pytest.approx(1.0)
    for name in ("gradient_conflicts.png", "combiner_curves.png", "training_curves.png"):
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    # rlw forms no task gradients, yet the probe measures its conflicts as it does pcgrad's: both are plotted
    from mtlbench.bench.plots import _conflicts_by_recipe
    from mtlbench.bench.records import load_records
    plotted, probed = _conflicts_by_recipe(load_records(tmp_path / "out"))
    assert probed and list(plotted) == ["pc", "rw"]
    assert set(plotted["rw"][0]) == {"sst|quora", "sst|sts", "quora|sts"}
    assert plotted["rw"][0]["sst|sts"]["probes"] >= 2


@pytest.mark.parametrize("name", ["pcgrad", "mgda", "cagrad", "nash_mtl", "upgrad", "fairgrad"])
def test_on_representation_weights_come_from_the_representation_gradients_of_a_real_model(real_step, name):
    """Weights from the Gramian of each task's dL_t/dz_t (z: what its head reads, flattened and
    zero-padded), then one backward: the shared gradient is sum_t w_t grad L_t; heads their own."""
    from mtlbench.strategies.base import StepInputs
    model, batches = real_step
    shared, heads = model.shared_parameters(), model.task_parameters()
    by_hand, head_expected = gradients_by_hand(model, batches)
    rows = []
    for task, batch in batches.items():
        output = model(task, batch)
        rows.append(torch.autograd.grad(output.loss, output.representation)[0].reshape(-1).double())
    width = max(len(r) for r in rows)
    rep = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
    cls = registry.get("combiner", name)
    twin = cls(cls.Options(on="representation"), list(batches), torch.Generator().manual_seed(5))
    outputs = {t: model(t, b) for t, b in batches.items()}
    values = torch.stack([o.loss.detach() for o in outputs.values()]).double()
    weights = twin.task_weights(rep @ rep.T, StepInfo(tuple(batches), values, torch.finfo(torch.float32).eps))

    combiner = cls(cls.Options(on="representation"), list(batches), torch.Generator().manual_seed(5))
    combiner.prepare(StepInputs(representations={t: o.representation for t, o in outputs.items()}))
    combiner.backward({t: o.loss for t, o in outputs.items()}, shared, heads, IDENTITY_PIPELINE)
    got = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in shared])
    # float32 sums of T terms that may cancel: the error scales with the terms, not with their sum
    terms = (weights.abs() @ by_hand.abs().double()).max().item()
    torch.testing.assert_close(got.double(), weights @ by_hand.double(), rtol=1e-4, atol=1e-5 * terms)
    for task, grads in head_expected.items():
        for parameter, grad in zip(heads[task], grads):
            torch.testing.assert_close(parameter.grad, grad)


def test_on_representation_refuses_regularisers_with_one_line_and_trains_without(tmp_path, capsys):
    from mtlbench.bench.cli import main

    from tests.conftest import write_suite
    suite = write_suite(tmp_path / "s.toml", '[[recipes]]\nname = "pc"\nsampler = "joint"\n'
                        'combiner = { name = "pcgrad", on = "representation" }\nregularizers = ["fgm"]\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "s.toml recipes[0].combiner.on: 'representation'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))
    suite = write_suite(tmp_path / "t.toml", '[[recipes]]\nname = "pc"\nsampler = "joint"\n'
                        'combiner = { name = "mgda", on = "representation" }\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    import json
    record = json.loads(next((tmp_path / "ok").glob("*-seed0.json")).read_text())
    assert record["config"]["recipe"]["combiner"]["options"]["on"] == "representation"
    assert record["strategies"]["combiner"]["steps"] > 0
