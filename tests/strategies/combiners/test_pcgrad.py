"""PCGrad against the paper's math on small tensors, and on a real model step."""

import pytest
import torch
from mtlbench.strategies import registry
from mtlbench.strategies.base import IDENTITY_PIPELINE
from mtlbench.strategies.combiners.pcgrad import pcgrad_weights
from mtlbench.strategies.gradients import task_gradients

from tests.conftest import gradients_by_hand, write_suite


def pcgrad(gradients, orders=None, reduction="sum"):
    """The PCGrad update and weights for a T x n matrix of task gradients."""
    weights = pcgrad_weights(gradients.double() @ gradients.double().T, orders, reduction,
                             torch.finfo(gradients.dtype).eps)
    return weights.to(gradients.dtype) @ gradients, weights


def random_orders(tasks, generator):
    return [torch.randperm(tasks, generator=generator).tolist() for _ in range(tasks)]


def naive_pcgrad(gradients, orders, reduction="sum"):
    """Algorithm 1 of Yu et al. (2020), literally, on the n-dimensional vectors."""
    projected = []
    for i, g_i in enumerate(gradients):
        g = g_i.clone()
        for j in orders[i]:
            if j == i:
                continue
            g_j = gradients[j]
            if g @ g_j < 0:
                g = g - (g @ g_j) / (g_j @ g_j) * g_j
        projected.append(g)
    total = torch.stack(projected).sum(0)
    return total / len(gradients) if reduction == "mean" else total


def test_textbook_two_task_conflict_in_both_orders():
    g1, g2 = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 0.0])
    # g1 loses its component along g2: [0, 1]; g2 loses its component along g1: [-0.5, 0.5].
    expected = torch.tensor([0.0, 1.0]) + torch.tensor([-0.5, 0.5])
    for order in ([g1, g2], [g2, g1]):
        combined, _ = pcgrad(torch.stack(order))
        torch.testing.assert_close(combined, expected)


def test_projected_gradients_no_longer_conflict():
    g1, g2 = torch.tensor([3.0, 1.0]), torch.tensor([-2.0, 2.0])
    combined, _ = pcgrad(torch.stack([g1, g2]))
    g1_pc = g1 - (g1 @ g2) / (g2 @ g2) * g2
    assert g1_pc @ g2 == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(combined, g1_pc + (g2 - (g2 @ g1) / (g1 @ g1) * g1))


def test_sum_and_mean_differ_by_the_number_of_tasks():
    gradients = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    total, _ = pcgrad(gradients, random_orders(3, torch.Generator().manual_seed(0)), "sum")
    mean, _ = pcgrad(gradients, random_orders(3, torch.Generator().manual_seed(0)), "mean")
    torch.testing.assert_close(total, 3 * mean)
    assert not torch.allclose(total, mean)


def test_non_conflicting_gradients_pass_through():
    gradients = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    combined, weights = pcgrad(gradients)
    torch.testing.assert_close(combined, gradients.sum(0))
    torch.testing.assert_close(weights, torch.ones(3, dtype=torch.float64))


def test_zero_and_tiny_gradients_never_divide_by_zero():
    combined, _ = pcgrad(torch.tensor([[0.0, 0.0], [1.0, -1.0]]))
    torch.testing.assert_close(combined, torch.tensor([1.0, -1.0]))
    combined, _ = pcgrad(torch.tensor([[1e-30, 0.0], [-1.0, 0.0]]))
    assert torch.isfinite(combined).all()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_order_matches_the_literal_algorithm(seed):
    gradients = torch.randn(4, 6, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
    orders = random_orders(4, torch.Generator().manual_seed(seed))
    combined, _ = pcgrad(gradients, orders)
    torch.testing.assert_close(combined, naive_pcgrad(gradients, orders))


def test_pcgrad_on_a_real_model_step_equals_the_math_by_hand(real_step):
    model, batches = real_step
    shared, heads = model.shared_parameters(), model.task_parameters()
    by_hand, head_expected = gradients_by_hand(model, batches)
    # the combiner draws one visiting order per task of the run, in the run's task order
    expected, _ = pcgrad(by_hand, random_orders(3, torch.Generator().manual_seed(7)))

    cls = registry.get("combiner", "pcgrad")
    combiner = cls(cls.Options(), list(batches), torch.Generator().manual_seed(7))
    combiner.backward({t: model(t, b).loss for t, b in batches.items()}, shared, heads, IDENTITY_PIPELINE)
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    for task, grads in head_expected.items():  # each head: its own task's gradient, untouched
        for parameter, grad in zip(heads[task], grads):
            torch.testing.assert_close(parameter.grad, grad)
    summary = combiner.summary()
    assert summary["steps"] == 1 and set(summary["conflicts"]) == {"sst|quora", "sst|sts", "quora|sts"}


def test_task_gradients_rows_are_the_per_task_gradients():
    shared = [torch.nn.Parameter(torch.tensor([1.0, 2.0]))]
    heads = {"a": [torch.nn.Parameter(torch.tensor(3.0))], "b": []}
    losses = {"a": (shared[0] * heads["a"][0]).sum(), "b": (shared[0] ** 2).sum()}
    rows, head_grads = task_gradients(losses, shared, heads, IDENTITY_PIPELINE)
    torch.testing.assert_close(rows, torch.tensor([[3.0, 3.0], [2.0, 4.0]]))
    assert head_grads["a"][0].item() == pytest.approx(3.0) and head_grads["b"] == []


def test_pcgrad_with_a_single_task_sampler_fails_at_config_time(tmp_path, capsys):
    from mtlbench.bench.cli import main
    suite = write_suite(tmp_path / "s.toml", '[[recipes]]\nname = "x"\nsampler = "round_robin"\ncombiner = "pcgrad"\n')
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    assert "needs several task losses per step" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_reduction_option_is_validated():
    from mtlbench.tasks.errors import UserError
    cls = registry.get("combiner", "pcgrad")
    with pytest.raises(UserError, match="reduction must be one of"):
        registry.make_options(cls, {"reduction": "avg"}, "test")
