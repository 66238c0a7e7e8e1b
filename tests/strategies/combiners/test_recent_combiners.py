"""Known answers from each paper's math for the 2021-2025 combiners (STCH, FairGrad, ExcessMTL, MoCo,
SDMGrad, MoDo, ConFIG, DualProj, IMTL, Auto-Lambda), at scales 1e-6, 1 and 1e4 in float32 and
float64, and agreement with TorchJD (a test-only oracle) where it implements the same convention."""

import math

import numpy as np
import pytest
import torch
from mtlbench.strategies.base import IDENTITY_PIPELINE, StepInputs
from mtlbench.strategies.gradients import project_onto_simplex

from tests.conftest import build_combiner, combiner_updates, linear_losses

SCALES = [1e-6, 1.0, 1e4]
DTYPES = [torch.float32, torch.float64]
aggregation = pytest.importorskip("torchjd.aggregation")


def random_jacobian(tasks, dims, seed, dtype=torch.float64):
    return torch.randn(tasks, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def tol(dtype) -> float:
    return 1e-4 if dtype == torch.float32 else 1e-9


def one_update(name, J, values=None, **options):
    values = torch.ones(len(J), dtype=J.dtype) if values is None else values
    updates, combiner = combiner_updates(name, [J], [values], options=options)
    return updates[0], combiner


# --- the simplex projection every stochastic weighting uses ---------------------------------------

def test_simplex_projection_is_the_closest_point_of_the_simplex():
    from scipy.optimize import minimize
    for seed in range(5):
        y = torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
        x = project_onto_simplex(y)
        assert x.min() >= 0 and x.sum().item() == pytest.approx(1.0)
        target = y.numpy()
        best = minimize(lambda v, target=target: ((v - target) ** 2).sum(), np.full(5, 0.2), method="SLSQP",
                        bounds=[(0, None)] * 5, constraints={"type": "eq", "fun": lambda v: v.sum() - 1},
                        options={"ftol": 1e-14})
        assert np.allclose(x.numpy(), best.x, atol=1e-6)
    assert torch.equal(project_onto_simplex(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)),
                       torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64))


# --- STCH ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mu", [0.01, 1.0, 100.0])
def test_stch_weights_are_the_gradient_of_the_smooth_tchebycheff_objective(mu):
    from mtlbench.strategies.combiners.stch import stch_weights
    losses = torch.tensor([0.3, 2.0, 0.9], dtype=torch.float64, requires_grad=True)
    nadir = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    objective = len(losses) * mu * torch.logsumexp(torch.log(losses / nadir) / mu, 0)
    expected, = torch.autograd.grad(objective, losses)
    torch.testing.assert_close(stch_weights(losses.detach(), nadir, mu), expected)


def test_stch_tends_to_the_tchebycheff_max_and_to_the_mean_of_log_losses():
    from mtlbench.strategies.combiners.stch import stch_weights
    losses, nadir = torch.tensor([0.3, 2.0, 0.9], dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    sharp = stch_weights(losses, nadir, 1e-4)  # all weight on the worst task, log L: 3 / L_worst
    torch.testing.assert_close(sharp, torch.tensor([0.0, 3 / 2.0, 0.0], dtype=torch.float64))
    flat = stch_weights(losses, nadir, 1e6)  # the mean of the log losses (times T): 1 / L_t
    torch.testing.assert_close(flat, 1 / losses, rtol=1e-5, atol=0)


def test_stch_warms_up_on_log_losses_then_normalises_by_the_warm_up_mean():
    J = torch.eye(2, dtype=torch.float64)
    values = [torch.tensor([1.0, 4.0], dtype=torch.float64), torch.tensor([3.0, 2.0], dtype=torch.float64),
              torch.tensor([1.0, 1.5], dtype=torch.float64)]
    updates, combiner = combiner_updates("stch", [J] * 3, values, options={"warmup_steps": 2, "mu": 0.5})
    torch.testing.assert_close(updates[0], 1 / values[0])  # sum of log losses
    torch.testing.assert_close(updates[1], 1 / values[1])
    nadir = torch.tensor([2.0, 3.0], dtype=torch.float64)
    share = torch.softmax(torch.log(values[2] / nadir) / 0.5, 0)
    torch.testing.assert_close(updates[2], 2 * share / values[2])
    assert combiner.summary()["nadir"] == {"t0": 2.0, "t1": 3.0}


# --- FairGrad --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_fairgrad_on_orthogonal_gradients_has_the_closed_form(alpha, dtype):
    """G / trace = diag(d): d w = w^(-1/alpha), so w = d^(-alpha / (1 + alpha)); alpha = 1 is the sum
    of unit gradients (proportional fairness), alpha = 0 the mean."""
    norms = torch.tensor([1.0, 3.0, 0.5], dtype=torch.float64)
    for scale in SCALES:
        J = (scale * torch.diag(norms)).to(dtype)
        update, _ = one_update("fairgrad", J, alpha=alpha)
        d = norms ** 2 / (norms ** 2).sum()
        w = torch.full((3,), 1 / 3, dtype=torch.float64) if alpha == 0 else d ** (-alpha / (1 + alpha))
        assert rel(update, w @ J.double()) < tol(dtype), (scale, alpha)
        if alpha == 1:
            unit_sum = torch.ones(3, dtype=torch.float64)
            assert rel(update / update.norm(), unit_sum / unit_sum.norm()) < tol(dtype)


@pytest.mark.parametrize("scale", SCALES)
def test_fairgrad_agrees_with_torchjd_on_the_normalised_gramian_and_in_direction(scale):
    from mtlbench.strategies.combiners.fairgrad import fairgrad_weights
    for seed, (tasks, dims) in enumerate([(2, 8), (3, 8), (4, 30)]):
        J = scale * random_jacobian(tasks, dims, seed)
        G = J @ J.T
        ours = fairgrad_weights(G, 2.0)
        theirs = aggregation.FairGradWeighting(2.0)(G / G.trace())  # TorchJD solves on the raw Gramian
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
        if scale == 1.0:  # on the raw Gramian: the same direction, length c = trace^(-alpha / (1 + alpha))
            raw = aggregation.FairGrad(2.0)(J)
            assert rel(ours @ J / (ours @ J).norm(), raw / raw.norm()) < 1e-6
            assert (raw.norm() / (ours @ J).norm()).item() == pytest.approx(G.trace().item() ** (-2 / 3), rel=1e-5)


def test_fairgrad_gives_no_update_where_no_direction_improves_every_task():
    J = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # g0 = -g1: stationary
    update, _ = one_update("fairgrad", J)
    assert torch.equal(update, torch.zeros(2, dtype=torch.float64))


# --- DualProj ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dualproj_is_the_closest_point_of_the_dual_cone_to_the_mean(dtype):
    """KKT of min ||d - mean||^2 s.t. G d >= 0: d - mean = sum_j mu_j g_j, mu >= 0, mu_j (g_j . d) = 0."""
    from scipy.optimize import nnls
    for seed in range(4):
        for scale in SCALES:
            J = (scale * random_jacobian(3, 6, seed)).to(dtype)
            J[1] = -0.8 * J[0] + 0.3 * J[1]  # a conflict, so the projection is active
            d, _ = one_update("dualproj", J)
            Jd, d = J.double(), d.double()
            assert (Jd @ d >= -1e-6 * Jd.norm(dim=1) * d.norm()).all()
            mu, _ = nnls(Jd.T.numpy(), (d - Jd.mean(0)).numpy())
            residual = Jd.T @ torch.from_numpy(mu) - (d - Jd.mean(0))
            assert residual.norm() <= 1e-5 * Jd.norm() if dtype == torch.float32 else 1e-9 * Jd.norm()
            assert abs(float(torch.from_numpy(mu) @ (Jd @ d))) <= 1e-5 * (Jd.norm() * d.norm()).item()
    J = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # no conflict: the mean itself
    torch.testing.assert_close(one_update("dualproj", J)[0], torch.tensor([0.5, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("scale", SCALES)
def test_dualproj_agrees_with_torchjd(scale):
    pytest.importorskip("quadprog")
    from torchjd._linalg._dual_cone import QuadprogProjector
    exact = QuadprogProjector(norm_eps=0.0, reg_eps=0.0)  # TorchJD's default adds 1e-4 I (docs/combiners.md)
    for seed in range(4):
        J = scale * random_jacobian(3, 8, seed)
        J[2] = -J[0] + 0.2 * J[2]
        ours, _ = one_update("dualproj", J)
        assert rel(ours, aggregation.DualProj(projector=exact)(J)) < 1e-8


# --- ConFIG -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_config_on_orthogonal_gradients_and_its_equal_cosines(dtype):
    norms = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    for scale in SCALES:
        J = (scale * torch.diag(norms)).to(dtype)
        update, _ = one_update("conflict_free", J)  # d_hat = 1 / sqrt(3); length sum_i n_i / sqrt(3)
        assert rel(update, scale * norms.sum() / 3 * torch.ones(3, dtype=torch.float64)) < tol(dtype)
        J = (scale * random_jacobian(3, 7, 5)).to(dtype)
        update, _ = one_update("conflict_free", J)
        cosines = (J.double() @ update.double()) / (J.double().norm(dim=1) * update.double().norm())
        assert cosines.min().item() == pytest.approx(cosines.max().item(), rel=10 * tol(dtype))
        length = (J.double() @ (update.double() / update.double().norm())).sum()
        assert update.double().norm().item() == pytest.approx(length.item(), rel=10 * tol(dtype))


@pytest.mark.parametrize("scale", SCALES)
def test_config_agrees_with_torchjd(scale):
    for seed, (tasks, dims) in enumerate([(2, 5), (3, 8), (5, 3), (4, 40)]):
        J = scale * random_jacobian(tasks, dims, seed)
        ours, _ = one_update("conflict_free", J)
        assert rel(ours, aggregation.ConFIG()(J)) < 1e-9


# --- ExcessMTL --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_excess_mtl_by_hand(dtype):
    """Step 1: risks sum_i g^2 / sqrt(g^2) = [1, 2], the baseline: ratios 1, weights stay uniform.
    Step 2: S = [[5, 0], [0, 8]], risks [4 / sqrt 5, 4 / sqrt 8], over the baseline [1.789, 0.707];
    w = softmax(log 1/2 + eta * ratio)."""
    for scale in SCALES:
        J1 = (scale * torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)).to(dtype)
        J2 = (scale * torch.tensor([[2.0, 0.0], [0.0, 2.0]], dtype=torch.float64)).to(dtype)
        updates, _ = combiner_updates("excess_mtl", [J1, J2], [torch.ones(2, dtype=dtype)] * 2,
                                      options={"robust_step_size": 0.5})
        assert rel(updates[0], 0.5 * J1.double().sum(0)) < tol(dtype)
        w = torch.softmax(0.5 * torch.tensor([4 / math.sqrt(5), (4 / math.sqrt(8)) / 2], dtype=torch.float64), 0)
        assert rel(updates[1], w @ J2.double()) < tol(dtype), scale


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_excess_mtl_agrees_with_torchjd_after_a_warm_up(scale):
    """With a warm-up both take the warm-up mean as the baseline. TorchJD adds 1e-7 under the root
    and to the baseline: equal to 1e-6 at unit scale and above, not at 1e-6 (docs/combiners.md)."""
    steps = [scale * random_jacobian(3, 20, seed) for seed in range(6)]
    ours, _ = combiner_updates("excess_mtl", steps, [torch.ones(3, dtype=torch.float64)] * 6,
                               options={"warmup_steps": 2})
    theirs = aggregation.ExcessMTLWeighting(n_warmup_steps=2)
    for J, update in zip(steps, ours):
        assert rel(update, theirs(J) @ J) < 1e-6


# --- MoCo -------------------------------------------------------------------------------------------

def test_moco_first_step_by_hand_and_convergence_to_the_min_norm_weights():
    from mtlbench.strategies.combiners.mgda import min_norm_weights
    J = torch.tensor([[1.0, 0.0], [0.5, 2.0], [-0.3, 0.4]], dtype=torch.float64)
    G = J @ J.T
    update, _ = one_update("moco", J, gamma=0.1)
    lam = project_onto_simplex(torch.full((3,), 1 / 3, dtype=torch.float64) - 0.1 * (G / G.trace()) @ torch.full(
        (3,), 1 / 3, dtype=torch.float64))
    torch.testing.assert_close(update, lam @ J)
    # constant gradients: y = g, and the projected-gradient iteration converges to MGDA's min-norm weights
    for scale in SCALES:
        updates, _ = combiner_updates("moco", [scale * J] * 400, [torch.ones(3, dtype=torch.float64)] * 400,
                                             options={"gamma": 1.0, "gamma_sigma": 0.0})
        torch.testing.assert_close(updates[-1], scale * (min_norm_weights(G) @ J), rtol=1e-6, atol=1e-12 * scale)


def test_moco_tracks_gradients_with_the_decaying_rate():
    J1, J2 = torch.eye(2, dtype=torch.float64), torch.tensor([[3.0, 0.0], [0.0, 5.0]], dtype=torch.float64)
    _, combiner = combiner_updates("moco", [J1, J2], [torch.ones(2, dtype=torch.float64)] * 2,
                                   options={"beta": 0.5, "beta_sigma": 0.5})
    beta = 0.5 / math.sqrt(2)
    torch.testing.assert_close(combiner.estimates, J1 + beta * (J2 - J1))


# --- SDMGrad and MoDo (double sampling) ----------------------------------------------------------

def double_sampled_updates(name, pairs, **options):
    """Each step's update with J_1 from the step's batch and J_2 from the extra one."""
    tasks = [f"t{i}" for i in range(len(pairs[0][0]))]
    combiner = build_combiner(name, tasks, **options)
    updates = []
    for first, second in pairs:
        theta = torch.nn.Parameter(torch.zeros(first.shape[1], dtype=first.dtype))
        values = torch.ones(len(first), dtype=first.dtype)
        combiner.prepare(StepInputs(lambda second=second, theta=theta, values=values:
                                    [linear_losses(second, values, theta)]))
        combiner.backward(linear_losses(first, values, theta), [theta], {}, IDENTITY_PIPELINE)
        updates.append(theta.grad.detach().clone())
    return updates, combiner


@pytest.mark.parametrize("scale", SCALES)
def test_sdmgrad_agrees_with_torchjd_on_the_cross_gramian(scale):
    pairs = [(scale * random_jacobian(3, 10, 2 * s), scale * random_jacobian(3, 10, 2 * s + 1)) for s in range(4)]
    ours, _ = double_sampled_updates("sdmgrad", pairs)
    normalised, raw = aggregation.SDMGradWeighting(), aggregation.SDMGradWeighting()
    for (first, second), update in zip(pairs, ours):
        cross = first @ second.T
        size = cross.diagonal().clamp_min(0).sqrt().mean() ** 2
        assert rel(update, normalised(cross / size) @ (first + second) / 2) < 1e-9
        # on the raw A, TorchJD divides by size + 1e-8: the same from unit scale up, not at 1e-6
        if scale >= 1.0:
            assert rel(update, raw(cross) @ (first + second) / 2) < 1e-6


def test_sdmgrad_inner_solve_reaches_its_quadratic_programme():
    """Many inner steps: w minimises 1/2 ||G^T (w + lam w~)||^2 over the simplex (KKT)."""
    from mtlbench.strategies.combiners.sdmgrad import sdmgrad_solve
    J = random_jacobian(4, 9, 3)
    K = J @ J.T
    K = K / K.diagonal().sqrt().mean() ** 2
    w, _ = sdmgrad_solve(torch.full((4,), 0.25, dtype=torch.float64), K, 0.5, 0.0, 5000, 0.3)
    gradient = K @ (w + 0.3 * torch.full((4,), 0.25, dtype=torch.float64))
    active = w > 1e-9
    assert torch.allclose(gradient[active], gradient[active].mean().expand(int(active.sum())), atol=1e-8)
    assert (gradient[~active] >= gradient[active].mean() - 1e-8).all()


@pytest.mark.parametrize("scale", SCALES)
def test_modo_agrees_with_torchjd_on_the_normalised_cross_gramian(scale):
    pairs = [(scale * random_jacobian(3, 10, 2 * s), scale * random_jacobian(3, 10, 2 * s + 1)) for s in range(4)]
    ours, _ = double_sampled_updates("modo", pairs)
    theirs = aggregation.MoDoWeighting(gamma=0.1, rho=0.1)
    for (first, second), update in zip(pairs, ours):
        cross = first @ second.T / (first.norm() * second.norm())
        assert rel(update, theirs(cross) @ (first + second) / 2) < 1e-9


def test_modo_converges_to_the_regularised_min_norm_weights():
    J = torch.tensor([[1.0, 0.0], [0.5, 2.0], [-0.3, 0.4]], dtype=torch.float64)
    _, combiner = double_sampled_updates("modo", [(J, J)] * 3000, gamma=1.0, rho=0.1)
    K = J @ J.T / J.norm() ** 2 + 0.1 * torch.eye(3, dtype=torch.float64)
    lam = combiner.lambdas
    gradient = K @ lam
    active = lam > 1e-9
    assert torch.allclose(gradient[active], gradient[active].mean().expand(int(active.sum())), atol=1e-8)


def test_double_sampled_heads_get_the_mean_of_their_two_gradients():
    first, second = torch.eye(2, dtype=torch.float64), 3 * torch.eye(2, dtype=torch.float64)
    combiner = build_combiner("modo", ["t0", "t1"])
    theta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    heads = {t: [torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))] for t in ("t0", "t1")}

    def losses(J):
        return {t: J[i] @ theta + (i + 1.0) * (2 if J is second else 1) * heads[t][0].sum() for i, t in enumerate(heads)}
    combiner.prepare(StepInputs(lambda: [losses(second)]))
    combiner.backward(losses(first), [theta], heads, IDENTITY_PIPELINE)
    assert heads["t0"][0].grad.item() == pytest.approx((1 + 2) / 2)
    assert heads["t1"][0].grad.item() == pytest.approx((2 + 4) / 2)


# --- IMTL (IMTL-L + IMTL-G) --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_imtl_balances_the_scaled_gradients_and_pulls_each_scaled_loss_to_one(dtype):
    """Orthogonal g_t scaled by e^{s_t}: equal projections need a_t e^{s_t} n_t equal, sum a = 1.
    The log scales' gradient is e^{s_t} L_t - 1."""
    norms = torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64)
    values = torch.tensor([0.5, 2.0, 1.0], dtype=dtype)
    for scale in SCALES:
        J = (scale * torch.diag(norms)).to(dtype)
        combiner = build_combiner("imtl", ["t0", "t1", "t2"])
        combiner.optimizer_groups(1e-3, torch.device("cpu"))
        with torch.no_grad():
            combiner.log_scales.copy_(torch.tensor([0.1, -0.2, 0.3]))
        theta = torch.nn.Parameter(torch.zeros(3, dtype=dtype))
        combiner.backward(linear_losses(J, values, theta), [theta], {}, IDENTITY_PIPELINE)
        e = torch.exp(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64))
        a = 1 / (e * norms)
        a = a / a.sum()
        assert rel(theta.grad, (a * e) @ J.double()) < tol(dtype), scale
        torch.testing.assert_close(combiner.log_scales.grad.double(), e * values.double() - 1, rtol=1e-6, atol=1e-6)


def test_imtl_loss_scales_learn_e_s_times_l_equal_to_one():
    combiner = build_combiner("imtl", ["t0", "t1"])
    groups = combiner.optimizer_groups(0.1, torch.device("cpu"))
    optimizer = torch.optim.SGD(groups, lr=0.1)
    values = torch.tensor([0.25, 4.0], dtype=torch.float64)
    for _ in range(400):
        theta = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        combiner.backward(linear_losses(torch.eye(2, dtype=torch.float64), values, theta), [theta], {},
                          IDENTITY_PIPELINE)
        optimizer.step()
        optimizer.zero_grad()
    torch.testing.assert_close(torch.exp(combiner.log_scales.detach()).double() * values,
                               torch.ones(2, dtype=torch.float64), rtol=1e-4, atol=0)


# --- Auto-Lambda ----------------------------------------------------------------------------------

def test_auto_lambda_meta_gradient_is_the_derivative_through_the_virtual_step():
    """On a non-linear model, the weights' gradient equals autograd's derivative of the held-out
    loss after the virtual SGD step (divided by the Gramian's trace, the scale convention)."""
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 4, 3, generator=g, dtype=torch.float64), torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    theta0 = torch.randn(3, generator=g, dtype=torch.float64)
    head0 = [torch.randn(1, generator=g, dtype=torch.float64) for _ in range(2)]

    def loss(M, theta, head, t):
        return (torch.tanh(M[t] @ theta) * head).pow(2).sum()

    alpha, lambdas = 0.05, torch.tensor([0.1, 0.1], dtype=torch.float64, requires_grad=True)
    grads = [torch.autograd.grad(loss(A, theta0.requires_grad_(), head0[t].requires_grad_(), t),
                                 [theta0, head0[t]], create_graph=True) for t in range(2)]
    theta1 = theta0 - alpha * sum(lambdas[t] * grads[t][0] for t in range(2))
    heads1 = [head0[t] - alpha * lambdas[t] * grads[t][1] for t in range(2)]
    truth, = torch.autograd.grad(sum(loss(B, theta1, heads1[t], t) for t in range(2)), lambdas)

    combiner = build_combiner("auto_lambda", ["t0", "t1"])
    theta = torch.nn.Parameter(theta0.detach().clone())
    heads = {f"t{t}": [torch.nn.Parameter(head0[t].detach().clone())] for t in range(2)}
    combiner.prepare(StepInputs(lambda: [{f"t{t}": loss(B, theta, heads[f"t{t}"][0], t) for t in range(2)}], alpha))
    combiner.backward({f"t{t}": loss(A, theta, heads[f"t{t}"][0], t) for t in range(2)}, [theta], heads,
                      IDENTITY_PIPELINE)
    flat = [torch.cat([gr.detach().reshape(-1) for gr in grads[t]]) for t in range(2)]
    trace = sum(float(f @ f) for f in flat)
    torch.testing.assert_close(combiner.weights.grad, truth.detach() / trace)
    torch.testing.assert_close(theta.detach(), theta0.detach())  # the virtual step is undone
    # the model's gradient is sum_t lambda_t grad L_t, with the weights after their Adam step
    after = combiner.weights.detach()
    torch.testing.assert_close(theta.grad, after[0] * grads[0][0].detach() + after[1] * grads[1][0].detach())
    torch.testing.assert_close(heads["t1"][0].grad, after[1] * grads[1][1].detach())
