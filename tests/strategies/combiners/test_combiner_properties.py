"""Properties every registered combiner must have, checked by merely existing: a new combiner is
picked up from the registry. On Jacobians of many shapes (random, strongly conflicting, norms
spread x1000, a zero row, nearly parallel rows, T > n; T in {2, 3, 5}), in float32 and float64:
- scale: the update scales linearly with the gradients over 1e-8 ... 1e4, and the task weights
  do not change (three consecutive steps, so that state such as EMAs and learned weights is covered);
- permutation: listing a step's tasks in another order changes nothing (randomness fixed);
  a deterministic method is also equivariant under a permutation of the run's task list;
- finite, bounded output with a zero row, with T > n and with nearly parallel rows; all-zero
  gradients give a zero update.
Then each method's own optimality conditions, at unit, tiny and huge scale, and the issue's repros.
"""

import math

import numpy as np
import pytest
import torch
from mtlbench.strategies import registry
from mtlbench.strategies.gradients import GramianWeighting

from tests.conftest import combiner_updates

# Every Gramian weighting also with `on = "representation"` (named NAME:representation here): on an
# identity encoder (z_t = theta) it must give exactly what the parameter gradients give.
GRAMIAN_WEIGHTINGS = sorted(n for n in registry.available("combiner")
                            if issubclass(registry.get("combiner", n), GramianWeighting))
COMBINERS = sorted(registry.available("combiner")) + [f"{n}:representation" for n in GRAMIAN_WEIGHTINGS]
SCALES = [1e-8, 1e-4, 1.0, 1e2, 1e4]
DTYPES = [torch.float32, torch.float64]
FAMILIES = ["random", "conflicting", "spread", "zero_row", "nearly_parallel", "more_tasks_than_dims"]
STEPS = 3


def test_the_suite_covers_every_combiner_of_the_method_family():
    assert len(registry.available("combiner")) >= 28, COMBINERS


def jacobian(family: str, tasks: int, seed: int, dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dims = 3 if family == "more_tasks_than_dims" else 8
    tasks = 5 if family == "more_tasks_than_dims" else tasks
    J = torch.randn(tasks, dims, generator=g, dtype=torch.float64)
    if family == "conflicting":
        J = torch.stack([(-1.0) ** i * J[0] + 0.3 * J[i] for i in range(tasks)])
    elif family == "spread":
        J = J * torch.logspace(0, 3, tasks, dtype=torch.float64)[:, None]
    elif family == "zero_row":
        J[1] = 0.0
    elif family == "nearly_parallel":
        J = J[0] + 1e-3 * J
    return J.to(dtype)


def loss_values(tasks: int, step: int, dtype) -> torch.Tensor:
    return (torch.tensor([0.7, 1.3, 2.1, 0.4, 1.0][:tasks], dtype=torch.float64) * (1.0 - 0.1 * step)).to(dtype)


def run(name, family, tasks, dtype, scale=1.0, **kwargs):
    jacobians = [jacobian(family, tasks, 10 * step + tasks, dtype) * scale for step in range(STEPS)]
    size = len(jacobians[0])
    name, _, on = name.partition(":")
    return combiner_updates(name, jacobians, [loss_values(size, step, dtype) for step in range(STEPS)],
                            options={"on": on} if on else None, **kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", GRAMIAN_WEIGHTINGS)
def test_representation_gradients_on_an_identity_encoder_equal_the_parameter_gradients(name, dtype):
    for family in FAMILIES:
        for seed in (0, 1):
            on_parameters, _ = run(name, family, 3, dtype, seed=seed)
            on_representation, combiner = run(f"{name}:representation", family, 3, dtype, seed=seed)
            assert combiner.options.on == "representation"
            for step, (got, want) in enumerate(zip(on_representation, on_parameters)):
                # the same weights; sum_t w_t g_t summed by autograd instead of a matmul: rounding only
                size = jacobian(family, 3, 10 * step + 3, torch.float64).norm(dim=1).sum().item()
                assert close(got.double(), want.double(), 100 * torch.finfo(dtype).eps, 10 * size), (family, seed)


def weights_of(combiner) -> dict | None:
    summary = combiner.summary()
    return summary.get("mean_weights")


def close(a: torch.Tensor, b: torch.Tensor, tolerance: float, reference: float) -> bool:
    return bool((a - b).norm() <= tolerance * reference)


def tolerance(dtype) -> float:
    return 2e-4 if dtype == torch.float32 else 1e-7


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", COMBINERS)
def test_update_scales_linearly_and_weights_do_not_change(name, family, dtype):
    for tasks in (2, 3, 5):
        base, combiner = run(name, family, tasks, dtype)
        base_weights = weights_of(combiner)
        sizes = [jacobian(family, tasks, 10 * step + tasks, torch.float64).norm(dim=1).sum().item()
                 for step in range(STEPS)]
        for scale in SCALES:
            updates, combiner = run(name, family, tasks, dtype, scale)
            for step, (got, want) in enumerate(zip(updates, base)):
                assert torch.isfinite(got).all(), (scale, step)
                # relative to the update, plus what rounding leaves of an update that cancels to ~0
                # (weights up to ~100 on gradients that cancel: a few hundred eps of their size)
                floor = 1000 * torch.finfo(dtype).eps * sizes[step] * scale
                assert (got.double() - scale * want.double()).norm() <= tolerance(dtype) * scale * want.norm() + floor, \
                    f"T={tasks} scale {scale:g} step {step}: {got.tolist()} != {scale:g} x {want.tolist()}"
            if base_weights is not None and family != "more_tasks_than_dims":  # (T > n: only the update is unique)
                weights = weights_of(combiner)
                for task, value in base_weights.items():
                    assert weights[task] == pytest.approx(value, rel=tolerance(dtype) * 10, abs=tolerance(dtype)), \
                        f"T={tasks} scale {scale:g}: weight of {task}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", COMBINERS)
def test_finite_bounded_and_zero_for_zero_gradients(name, family, dtype):
    for tasks in (2, 3, 5):
        updates, _ = run(name, family, tasks, dtype)
        for step, update in enumerate(updates):
            J = jacobian(family, tasks, 10 * step + tasks, dtype)
            assert torch.isfinite(update).all()
            assert update.norm() <= 10 * J.norm(dim=1).sum() * len(J), f"T={tasks} step {step}: {update.norm()}"
    zeros, _ = run(name, "zero_row", 3, dtype, scale=0.0)
    for update in zeros:
        assert torch.equal(update, torch.zeros_like(update))


def permuted(name, family, dtype, seed, order=None, task_order=None):
    updates, combiner = run(name, family, 3, dtype, seed=seed, order=order, task_order=task_order)
    return updates, weights_of(combiner)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", COMBINERS)
def test_permuting_the_tasks_permutes_nothing_else(name, dtype):
    for family in ("random", "conflicting", "spread"):
        base, base_weights = permuted(name, family, dtype, seed=3)
        for order in ([2, 0, 1], [1, 2, 0]):
            updates, weights = permuted(name, family, dtype, seed=3, order=order)
            for got, want in zip(updates, base):
                assert close(got.double(), want.double(), tolerance(dtype), want.norm().item() + 1e-9), (family, order)
            if base_weights is not None:
                assert weights == pytest.approx(base_weights, rel=tolerance(dtype) * 10, abs=tolerance(dtype))
        other_seed, _ = permuted(name, family, dtype, seed=4)
        deterministic = all(torch.equal(a, b) for a, b in zip(other_seed, base))
        if deterministic:  # then the run's own task list may be permuted too
            updates, weights = permuted(name, family, dtype, seed=3, task_order=["t1", "t2", "t0"])
            for got, want in zip(updates, base):
                assert close(got.double(), want.double(), tolerance(dtype), want.norm().item() + 1e-9), family
            if base_weights is not None:
                assert weights == pytest.approx(base_weights, rel=tolerance(dtype) * 10, abs=tolerance(dtype))


# --- each method's own optimality conditions, at every scale ------------------------------------

OPTIMALITY_SCALES = [1e-8, 1.0, 1e4]


def gramian_cases(dtype):
    for family in ("random", "conflicting", "spread", "nearly_parallel", "zero_row"):
        for tasks in (2, 3, 5):
            for scale in OPTIMALITY_SCALES:
                J = jacobian(family, tasks, 100 + tasks, dtype) * scale
                yield f"{family} T={tasks} scale {scale:g}", J, (J.double() @ J.double().T)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pcgrad_leaves_no_conflict_with_the_last_gradient_it_was_projected_against(dtype):
    from mtlbench.strategies.combiners.pcgrad import pcgrad_coefficients
    for case, J, gram in gramian_cases(dtype):
        tasks = len(J)
        orders = [torch.randperm(tasks, generator=torch.Generator().manual_seed(i)).tolist() for i in range(tasks)]
        projected = pcgrad_coefficients(gram, orders, torch.finfo(dtype).eps) @ J.double()
        for i, order in enumerate(orders):
            last = [j for j in order if j != i][-1]
            if J[last].abs().sum() == 0:
                continue
            assert projected[i] @ J[last].double() >= -1e-12 * projected[i].norm() * J[last].double().norm(), case
        if tasks == 2:  # with two tasks, no projected gradient conflicts with the other task at all
            assert (projected[0] @ J[1].double()) >= -1e-12 * gram.diagonal().sum()
            assert (projected[1] @ J[0].double()) >= -1e-12 * gram.diagonal().sum()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mgda_weights_satisfy_the_min_norm_kkt_conditions(dtype):
    from mtlbench.strategies.combiners.mgda import min_norm_weights
    for case, _, gram in gramian_cases(dtype):
        w = min_norm_weights(gram)
        unit = gram / gram.diagonal().sum()
        assert w.min() >= 0 and w.sum().item() == pytest.approx(1.0), case
        value, grad = w @ unit @ w, unit @ w  # grad_i = g_i . d / trace
        assert (grad >= value - 1e-9).all(), case  # every task's derivative along d is at least ||d||^2
        assert torch.allclose(grad[w > 1e-9], value.expand(int((w > 1e-9).sum())), atol=1e-9), case


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cagrad_update_solves_its_primal_problem(dtype):
    """KKT of max_d min_i g_i.d s.t. ||d - g0|| <= c ||g0||: d is on the ball's boundary, and
    d - g0 is a non-negative combination of the gradients that attain the minimum. A zero gradient
    (improvement 0 whatever d) is left out of the minimum, as the combiner documents."""
    from mtlbench.strategies.combiners.cagrad import cagrad_weights
    c = 0.5
    for case, J, gram in gramian_cases(dtype):
        tasks = len(J)
        weights = cagrad_weights(gram, c, rescale=False, eps=torch.finfo(dtype).eps)
        Jd = J.double()
        g0, d = Jd.mean(0), weights @ Jd
        assert (d - g0).norm().item() == pytest.approx(c * g0.norm().item(), rel=1e-6), case
        combination = weights - 1.0 / tasks
        assert combination.min() >= -1e-9 * combination.abs().max(), case
        present = Jd.norm(dim=1) > 0
        improvements = Jd[present] @ d
        active = improvements - improvements.min() <= 1e-6 * Jd.norm(dim=1).max() * d.norm()
        assert (combination[present][~active] <= 1e-6 * combination.abs().max()).all(), case
        assert (combination[~present] == 0).all(), case


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_imtl_g_update_projects_equally_on_every_unit_gradient(dtype):
    from mtlbench.strategies.combiners.imtl_g import imtl_g_weights
    for case, J, gram in gramian_cases(dtype):
        weights = imtl_g_weights(gram, torch.finfo(dtype).eps)
        Jd = J.double()
        present = Jd.norm(dim=1) > 0
        d = weights @ Jd
        projections = (Jd[present] @ d) / Jd[present].norm(dim=1)
        assert weights.sum().item() == pytest.approx(1.0), case
        assert torch.allclose(projections, projections[:1].expand_as(projections), rtol=1e-6,
                              atol=1e-9 * d.norm().item()), case


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_upgrad_projections_lie_in_the_dual_cone_and_are_optimal(dtype):
    from mtlbench.strategies.combiners.upgrad import dual_cone_projection_weights, upgrad_weights
    for case, J, gram in gramian_cases(dtype):
        present = J.double().norm(dim=1) > 0  # a zero gradient constrains nothing
        Jd, tasks = J.double()[present], int(present.sum())
        unit = (gram[present][:, present] / gram.diagonal().sum()).numpy()
        for i in range(tasks):
            v = dual_cone_projection_weights(unit, np.eye(tasks)[i])
            slack, excess = unit @ v, v - np.eye(tasks)[i]
            assert (excess >= -1e-12).all() and (slack >= -1e-9).all(), case  # feasible, in the dual cone
            assert np.abs(excess * slack).max() <= 1e-9, case  # complementary slackness: optimal
        d = upgrad_weights(gram) @ J.double()
        assert (Jd @ d >= -1e-9 * Jd.norm(dim=1).max() * d.norm()).all(), case  # conflicts with no task


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nash_mtl_weights_solve_the_bargaining_equations(dtype):
    from mtlbench.strategies.combiners.nash_mtl import nash_mtl_weights
    for case, J, gram in gramian_cases(dtype):
        alpha = nash_mtl_weights(gram, torch.finfo(dtype).eps)
        present = J.double().norm(dim=1) > 0
        K = gram[present][:, present]
        K = K / torch.linalg.matrix_norm(K)
        a = alpha[present]
        assert (a > 0).all() and (alpha[~present] == 0).all(), case
        assert torch.allclose(a * (K @ a), torch.ones_like(a), atol=1e-6), case  # alpha_i (K alpha)_i = 1


# --- the repros -------------------------------------------------------------------------

def update(name, J, **options):
    updates, _ = combiner_updates(name, [J], [torch.ones(len(J), dtype=J.dtype)], options=options)
    return updates[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_repro_cagrad_at_small_and_large_gradient_norms(dtype):
    J = 1e-3 * torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=dtype)
    torch.testing.assert_close(update("cagrad", J, c=0.5, rescale=False),
                               1e-3 * torch.tensor([0.4579, 0.6868], dtype=dtype), rtol=2e-4, atol=0)
    J = torch.diag(torch.tensor([1.0, 1000.0], dtype=dtype))
    torch.testing.assert_close(update("cagrad", J, c=0.5, rescale=False), torch.tensor([250.5, 500.0], dtype=dtype),
                               rtol=2e-4, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_repro_mgda_at_large_gradient_norms(dtype):
    J = 1e4 * torch.diag(torch.tensor([1.0, 2.0], dtype=dtype))
    torch.testing.assert_close(update("mgda", J), torch.tensor([8000.0, 4000.0], dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["pcgrad", "gradvac"])
def test_repro_tiny_gradients_are_still_projected(name, dtype):
    J = 1e-6 * torch.tensor([[1.0, 0.0], [-1.0, 1.0]], dtype=dtype)
    # g1 loses its component along g2: 0.5e-6 [1, 1]; g2 along g1: 1e-6 [0, 1]
    torch.testing.assert_close(update(name, J), 1e-6 * torch.tensor([0.5, 1.5], dtype=dtype))


def test_repro_aligned_mtl_on_an_exactly_rank_one_float32_pair():
    for seed in range(60):
        g = torch.randn(1000, generator=torch.Generator().manual_seed(seed))
        J = torch.stack([g, 3 * g])
        # rank 1: B = v v^T with v = [1, 3] / sqrt(10), weights 1^T B = [0.4, 1.2], update 4 g
        assert update("aligned_mtl", J).norm().item() == pytest.approx(4 * g.norm().item(), rel=1e-5), seed


def test_repro_mgda_kkt_holds_at_tiny_norms():
    from mtlbench.strategies.combiners.mgda import min_norm_weights
    J = torch.tensor([[1.0, 0.2, 0.0], [-0.4, 1.0, 0.3], [0.1, -0.5, 1.0]], dtype=torch.float64)
    for scale in (1e-3, 1e-6, 1e-9):
        G = (scale * J) @ (scale * J).T
        w = min_norm_weights(G)
        d = w @ (scale * J)
        violation = ((d @ d - (scale * J) @ d).clamp_min(0).max() / (d @ d)).item()  # g_i.d >= ||d||^2
        assert violation < 1e-9, (scale, violation)
        assert math.isclose(w.sum().item(), 1.0)
