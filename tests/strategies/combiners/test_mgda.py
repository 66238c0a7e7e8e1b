"""MGDA against the geometry it promises: the min-norm point of the convex hull of the gradients."""

import numpy as np
import pytest
import torch
from mtlbench.strategies import registry
from mtlbench.strategies.base import IDENTITY_PIPELINE
from mtlbench.strategies.combiners.mgda import mgda_weights, min_norm_weights


def mgda(gradients, normalization="none", apply_to="normalized", losses=None):
    weights = mgda_weights(gradients.double() @ gradients.double().T, normalization, apply_to, losses)
    return weights.to(gradients.dtype) @ gradients, weights.to(gradients.dtype)


def slsqp_min_norm(gramian):
    """Independent oracle: scipy's SLSQP on the simplex, from several starts."""
    from scipy.optimize import minimize

    gram = gramian.numpy()
    tasks = len(gram)
    best = None
    for start in [np.full(tasks, 1 / tasks)] + list(np.eye(tasks)):
        result = minimize(lambda w: w @ gram @ w, start, jac=lambda w: 2 * gram @ w, method="SLSQP",
                          bounds=[(0, 1)] * tasks, constraints={"type": "eq", "fun": lambda w: w.sum() - 1},
                          options={"ftol": 1e-15, "maxiter": 1000})
        if best is None or result.fun < best.fun:
            best = result
    return best.fun


def test_two_tasks_closed_form():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    # For T = 2 the min-norm weight of g1 is clip(((g2 - g1) . g2) / ||g1 - g2||^2, 0, 1) = 4/5.
    combined, weights = mgda(torch.stack([g1, g2]))
    torch.testing.assert_close(weights, torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(combined, torch.tensor([0.8, 0.4]))


@pytest.mark.parametrize("seed, tasks", [(0, 3), (1, 3), (2, 4), (3, 5)])
def test_returns_the_min_norm_point_of_the_convex_hull(seed, tasks):
    gradients = torch.randn(tasks, 7, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    gramian = gradients @ gradients.T
    weights = min_norm_weights(gramian)
    assert weights.min() >= 0 and weights.sum().item() == pytest.approx(1.0)
    ours = (weights @ gramian @ weights).item()
    assert ours <= slsqp_min_norm(gramian) + 1e-9  # never worse than an independent QP solver
    assert ours == pytest.approx(slsqp_min_norm(gramian), rel=1e-5, abs=1e-9)


def test_the_direction_does_not_increase_any_task_loss():
    """KKT of the min-norm problem: g_t . d >= ||d||^2 >= 0 for every task."""
    gradients = torch.tensor([[2.0, 1.0, 0.0], [-1.0, 2.0, 0.5], [0.5, -0.5, 1.0]], dtype=torch.float64)
    d, _ = mgda(gradients)
    assert ((gradients @ d) >= d @ d - 1e-6).all()


def test_pareto_stationary_point_gives_zero():
    d, weights = mgda(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    torch.testing.assert_close(d, torch.zeros(2))
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5]))


def test_identical_gradients_and_zero_gradients():
    d, _ = mgda(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    torch.testing.assert_close(d, torch.tensor([1.0, 1.0]))
    d, weights = mgda(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
    torch.testing.assert_close(d, torch.zeros(2))  # a zero gradient is the min-norm point
    assert torch.isfinite(weights).all()


def test_linearly_dependent_gradients_are_solved_exactly():
    gradients = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])  # rank 1, zero is in the hull
    d, weights = mgda(gradients)
    torch.testing.assert_close(d, torch.zeros(2), atol=1e-6, rtol=0)
    assert weights.sum().item() == pytest.approx(1.0)


def test_registered_as_a_multi_task_combiner():
    cls = registry.get("combiner", "mgda")
    assert cls.needs_several_tasks
    combiner = cls(cls.Options(), ["a", "b"], torch.Generator())
    shared = [torch.nn.Parameter(torch.tensor([1.0, 0.0]))]
    losses = {"a": shared[0] @ torch.tensor([1.0, 0.0]), "b": shared[0] @ torch.tensor([0.0, 2.0])}
    combiner.backward(losses, shared, {"a": [], "b": []}, IDENTITY_PIPELINE)
    torch.testing.assert_close(shared[0].grad, torch.tensor([0.8, 0.4]))
    assert combiner.summary()["mean_weights"] == pytest.approx({"a": 0.8, "b": 0.2})


def test_l2_normalization_makes_the_direction_invariant_to_loss_scale():
    gradients = torch.tensor([[2.0, 1.0, 0.0], [-1.0, 2.0, 0.5], [0.5, -0.5, 1.0]], dtype=torch.float64)
    scaled = gradients * torch.tensor([[1.0], [100.0], [1.0]], dtype=torch.float64)  # task 2's loss x 100
    d, _ = mgda(gradients, "l2")
    d_scaled, _ = mgda(scaled, "l2")
    torch.testing.assert_close(d, d_scaled)
    plain, plain_scaled = mgda(gradients)[0], mgda(scaled)[0]
    assert not torch.allclose(plain / plain.norm(), plain_scaled / plain_scaled.norm())  # "none" is not


def test_l2_weights_solve_the_problem_for_unit_gradients():
    gradients = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    _, weights = mgda(gradients, "l2")
    # Unit gradients e1, e2: min-norm weights 1/2 each, rescaled by 1/||g_t||.
    torch.testing.assert_close(weights, torch.tensor([0.5 / 3.0, 0.5 / 0.5], dtype=torch.float64))


def test_raw_application_keeps_the_weights_on_the_simplex_and_scales_the_original_gradients():
    """Sener & Koltun's code: weights solved for normalised gradients, applied to the raw ones."""
    gradients = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    d, weights = mgda(gradients, "l2", apply_to="raw")
    torch.testing.assert_close(weights, torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(d, 0.5 * gradients.sum(0))


def test_loss_normalization_divides_each_gradient_by_its_loss():
    gradients = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5], dtype=torch.float64)
    # g / L = (1, 0) and (0, 2): min-norm weights (0.8, 0.2) on those, i.e. (0.4, 0.4) on the raw g
    _, weights = mgda(gradients, "loss", losses=losses)
    torch.testing.assert_close(weights, torch.tensor([0.4, 0.4], dtype=torch.float64))
    _, weights = mgda(gradients, "loss+", losses=losses)  # g / (L ||g||) = (0.5, 0), (0, 2)
    unit = torch.tensor([[0.5, 0.0], [0.0, 2.0]], dtype=torch.float64)
    expected = min_norm_weights(unit @ unit.T) / torch.tensor([4.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(weights, expected)
