"""UPGrad, Nash-MTL, GradDrop, DB-MTL and GradNorm on cases whose answer follows from their papers' math."""

import numpy as np
import pytest
import torch
from mtlbench.strategies.combiners.db_mtl import db_mtl_update
from mtlbench.strategies.combiners.graddrop import graddrop
from mtlbench.strategies.combiners.gradnorm import gradnorm_step
from mtlbench.strategies.combiners.nash_mtl import nash_mtl_weights
from mtlbench.strategies.combiners.upgrad import upgrad_weights

from tests.conftest import combiner_updates


def random_gradients(tasks, dims, seed):
    return torch.randn(tasks, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- UPGrad -------------------------------------------------------------------------------------

def upgrad(gradients):
    return upgrad_weights(gradients @ gradients.T) @ gradients


def test_upgrad_textbook_conflicting_pair():
    # Dual cone of g1 = e1, g2 = (-1, 1): x1 >= 0 and x2 >= x1. g1 projects to (1/2, 1/2) (onto
    # x2 = x1), g2 to (0, 1) (onto x1 = 0); their mean is (1/4, 3/4).
    gradients = torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(upgrad(gradients), torch.tensor([0.25, 0.75], dtype=torch.float64))


def test_upgrad_is_the_mean_when_no_pair_conflicts():
    gradients = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.2, 0.3, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(upgrad(gradients), gradients.mean(0))


@pytest.mark.parametrize("seed", range(5))
def test_upgrad_projections_match_an_independent_qp_on_the_vectors(seed):
    """Each projection, by scipy's SLSQP directly on the n-vectors: min ||x - g_i||, G x >= 0."""
    from scipy.optimize import minimize
    gradients = random_gradients(3, 4, seed)
    G = gradients.numpy()
    projections = []
    for g in G:
        result = minimize(lambda x, g=g: ((x - g) ** 2).sum(), g, jac=lambda x, g=g: 2 * (x - g), method="SLSQP",
                          constraints={"type": "ineq", "fun": lambda x: G @ x, "jac": lambda x: G},
                          options={"ftol": 1e-15, "maxiter": 1000})
        projections.append(result.x)
    np.testing.assert_allclose(upgrad(gradients).numpy(), np.mean(projections, axis=0), atol=1e-6)


# --- Nash-MTL -----------------------------------------------------------------------------------

def test_nash_mtl_on_orthogonal_gradients_gives_each_task_the_same_improvement():
    # Orthogonal g_i, K = G G^T / F with F = ||G G^T||_F: K_ii alpha_i = 1 / alpha_i, so
    # alpha_i = sqrt(F) / ||g_i||, and every task improves by g_i . d = alpha_i ||g_i||^2 = sqrt(F) ||g_i||,
    # in proportion to its own gradient's size: no task is favoured.
    gradients = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
    gramian = gradients @ gradients.T
    alpha = nash_mtl_weights(gramian)
    frobenius = torch.linalg.matrix_norm(gramian)
    torch.testing.assert_close(alpha, frobenius.sqrt() / gradients.norm(dim=1))
    torch.testing.assert_close(gradients @ (alpha @ gradients), frobenius.sqrt() * gradients.norm(dim=1))


def test_nash_mtl_direction_ignores_each_tasks_loss_scale():
    """The bargaining solution is invariant to rescaling one player's utility: g_i -> c_i g_i
    leaves the update's direction unchanged (alpha_i -> alpha_i / c_i, up to the normalisation)."""
    gradients = random_gradients(3, 6, 1)
    scaled = gradients * torch.tensor([[1.0], [30.0], [0.01]], dtype=torch.float64)
    d = nash_mtl_weights(gradients @ gradients.T) @ gradients
    d_scaled = nash_mtl_weights(scaled @ scaled.T) @ scaled
    torch.testing.assert_close(d / d.norm(), d_scaled / d_scaled.norm())


def test_nash_mtl_gives_zero_at_a_pareto_stationary_point():
    gradients = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)  # exactly opposed
    torch.testing.assert_close(nash_mtl_weights(gradients @ gradients.T), torch.zeros(2, dtype=torch.float64))


# --- GradDrop -----------------------------------------------------------------------------------

def test_graddrop_keeps_everything_where_the_signs_agree():
    gradients = torch.tensor([[1.0, -2.0], [3.0, -0.5]])
    for u in (0.01, 0.5, 0.99):
        update, keep = graddrop(gradients, torch.full((2,), u))
        torch.testing.assert_close(update, gradients.sum(0))
        assert keep.all()


def test_graddrop_keeps_a_sign_with_probability_its_purity():
    # One coordinate: +3 and -1, purity P = (1 + 2/4) / 2 = 0.75. Over a uniform grid of U, the
    # positive gradient survives for 75 % of draws and the negative one for the rest.
    gradients = torch.tensor([[3.0], [-1.0]], dtype=torch.float64)
    draws = torch.linspace(0.0005, 0.9995, 1000, dtype=torch.float64)
    updates = torch.stack([graddrop(gradients, u.reshape(1))[0] for u in draws])
    assert (updates == 3.0).double().mean().item() == pytest.approx(0.75, abs=1e-3)
    assert (updates == -1.0).double().mean().item() == pytest.approx(0.25, abs=1e-3)
    assert updates.mean().item() == pytest.approx(0.75 * 3.0 - 0.25 * 1.0, abs=1e-2)


def test_graddrop_with_full_leak_is_the_sum():
    gradients = random_gradients(3, 5, 2)
    update, _ = graddrop(gradients, torch.rand(5, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 1.0)
    torch.testing.assert_close(update, gradients.sum(0))


def test_graddrop_combiner_records_the_kept_fraction():
    J = torch.tensor([[1.0, 1.0, -1.0, 2.0], [1.0, -1.0, 1.0, 0.0]])
    _, combiner = combiner_updates("graddrop", [J], [torch.ones(2)])
    kept = combiner.summary()["mean_kept_fraction"]
    assert 0.0 <= kept["t0"] <= 1.0 and 0.0 <= kept["t1"] <= 1.0
    assert "mean_weights" not in combiner.summary()  # not a weighting


# --- DB-MTL -------------------------------------------------------------------------------------

def test_db_mtl_first_step_rescales_each_log_gradient_to_the_largest():
    J = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    values = torch.tensor([0.5, 2.0], dtype=torch.float64)
    updates, _ = combiner_updates("db_mtl", [J], [values], options={"beta": 0.9})
    # log-loss gradients g_t / L_t = (6, 0) and (0, 0.5); buffers (1 - beta) times those; both
    # rescaled to the larger norm 0.6: (0.6, 0) + (0, 0.6)
    torch.testing.assert_close(updates[0], torch.tensor([0.6, 0.6], dtype=torch.float64))


def test_db_mtl_buffers_are_an_exponential_moving_average():
    first = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    second = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    ones = torch.ones(2, dtype=torch.float64)
    _, combiner = combiner_updates("db_mtl", [first, second], [ones, ones], options={"beta": 0.5})
    torch.testing.assert_close(combiner.buffers, 0.5 * (0.5 * first) + 0.5 * second)
    update, scales = db_mtl_update(combiner.buffers)
    torch.testing.assert_close(scales, torch.ones(2, dtype=torch.float64))  # equal norms already
    torch.testing.assert_close(update, combiner.buffers.sum(0))


def test_db_mtl_is_invariant_to_each_tasks_loss_scale():
    J = random_gradients(3, 5, 3)
    values = torch.tensor([0.4, 1.5, 2.5], dtype=torch.float64)
    scale = torch.tensor([1.0, 100.0, 0.01], dtype=torch.float64)
    plain, _ = combiner_updates("db_mtl", [J, 2 * J], [values, values / 2])
    scaled, _ = combiner_updates("db_mtl", [J * scale[:, None], 2 * J * scale[:, None]],
                                 [values * scale, values / 2 * scale])
    for a, b in zip(plain, scaled):  # L_t -> c_t L_t changes neither log L_t's gradient nor the update
        torch.testing.assert_close(a, b)


# --- GradNorm -----------------------------------------------------------------------------------

def test_gradnorm_weights_settle_where_the_weighted_norms_follow_the_training_rates():
    gradients = torch.diag(torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64))
    gramian = gradients @ gradients.T
    norms = gradients.norm(dim=1)
    for ratios, alpha in ((torch.ones(3, dtype=torch.float64), 1.5),
                          (torch.tensor([1.0, 0.5, 0.8], dtype=torch.float64), 1.0)):
        weights = torch.ones(3, dtype=torch.float64)
        for step in range(4000):
            weights = gradnorm_step(weights, gramian, ratios, alpha, lr=0.025 / (1 + step / 50))
        rates = ratios / ratios.mean()
        expected = rates ** alpha / norms  # fixed point: w_t ||g_t|| proportional to r_t^alpha
        torch.testing.assert_close(weights, 3 * expected / expected.sum(), atol=2e-3, rtol=0)
        assert weights.sum().item() == pytest.approx(3.0)


def test_gradnorm_starts_from_equal_weights_and_favours_the_smaller_gradient():
    J = torch.tensor([[1.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    values = torch.ones(2, dtype=torch.float64)
    updates, combiner = combiner_updates("gradnorm", [J, J], [values, values])
    torch.testing.assert_close(updates[0], J.sum(0))  # w = 1 on the first step
    assert combiner.weights[0] > 1.0 > combiner.weights[1]  # the smaller gradient gains weight
    torch.testing.assert_close(updates[1], combiner_updates("gradnorm", [J], [values])[1].weights @ J)
