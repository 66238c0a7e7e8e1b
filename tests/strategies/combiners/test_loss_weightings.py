"""Uncertainty weighting, DWA and FAMO against their papers' math, and their hooks in a real run."""

import json
import math

import pytest
import torch
from mtlbench.strategies.base import IDENTITY_PIPELINE
from mtlbench.strategies.combiners.dwa import dwa_weights
from mtlbench.strategies.combiners.famo import famo_logit_gradient, famo_weights

from tests.conftest import build_combiner, combiner_updates, write_suite

# --- uncertainty weighting ----------------------------------------------------------------------

def test_uncertainty_weighting_learns_the_log_of_a_constant_loss():
    """For a fixed loss L, 1/2 exp(-s) L + 1/2 s is minimised at s = log L (sigma^2 = L)."""
    combiner = build_combiner("uw", ["a", "b"])
    (group,) = combiner.optimizer_groups(0.1, torch.device("cpu"))
    assert group["weight_decay"] == 0.0 and group["lr"] == 0.1
    optimizer = torch.optim.SGD(group["params"], lr=0.5)
    theta = torch.nn.Parameter(torch.zeros(1))
    for _ in range(300):
        losses = {"a": 0.25 + 0 * theta.sum(), "b": 4.0 + 0 * theta.sum()}
        combiner.backward(losses, [theta], {}, IDENTITY_PIPELINE)
        optimizer.step()
        optimizer.zero_grad()
    torch.testing.assert_close(combiner.log_variances.detach(), torch.log(torch.tensor([0.25, 4.0])), atol=1e-4, rtol=0)
    summary = combiner.summary()
    assert summary["log_variances"]["b"] == pytest.approx(math.log(4.0), abs=1e-4)
    assert summary["mean_weights"]["a"] > summary["mean_weights"]["b"]  # the noisier task weighs less


def test_uncertainty_weighting_weights_are_half_inverse_variances():
    combiner = build_combiner("uw", ["a", "b"], init=1.0, lr=0.01)
    assert combiner.optimizer_groups(0.1, torch.device("cpu"))[0]["lr"] == 0.01
    J = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    updates, _ = combiner_updates("uw", [J], [torch.ones(2)], options={"init": 1.0})
    torch.testing.assert_close(updates[0], 0.5 * math.exp(-1.0) * J.sum(0))


# --- DWA ----------------------------------------------------------------------------------------

def test_dwa_weighs_the_task_whose_loss_fell_least_highest():
    # epoch means 1.0 -> 0.5 (ratio 0.5) and 1.0 -> 1.0 (ratio 1): w = 2 softmax([0.5, 1] / 2)
    weights = dwa_weights(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 1.0]), temperature=2.0)
    expected = 2 * torch.softmax(torch.tensor([0.25, 0.5]), 0)
    torch.testing.assert_close(weights, expected)
    assert weights[1] > 1.0 > weights[0] and weights.sum().item() == pytest.approx(2.0)


def test_dwa_uses_unit_weights_for_two_epochs_then_the_epoch_loss_ratios():
    combiner = build_combiner("dwa", ["a", "b"])
    theta = torch.nn.Parameter(torch.zeros(1))
    for epoch, (a, b) in enumerate([(1.0, 1.0), (0.5, 1.0), (0.5, 1.0)], 1):
        combiner.on_epoch_start(epoch)
        for _ in range(3):
            combiner.backward({"a": a + 0 * theta.sum(), "b": b + 0 * theta.sum()}, [theta], {}, IDENTITY_PIPELINE)
    trajectory = combiner.summary()["weight_trajectory"]
    assert combiner.epoch_means == [{"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 1.0}]
    last = dwa_weights(torch.tensor([0.5, 1.0]), torch.tensor([1.0, 1.0]))
    mean_a = (6 * 1.0 + 3 * last[0].item()) / 9
    assert trajectory["a"] == [pytest.approx(mean_a)]


# --- FAMO ---------------------------------------------------------------------------------------

def test_famo_weights_are_the_gradient_of_its_weighted_log_loss():
    logits = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    losses = torch.tensor([0.8, 2.0, 0.1], dtype=torch.float64, requires_grad=True)
    z = torch.softmax(logits, 0)
    c = (z / (losses + 1e-8)).sum().detach()
    (torch.log(losses + 1e-8) * z / c).sum().backward()  # Algorithm 2's objective
    torch.testing.assert_close(famo_weights(logits, losses.detach()), losses.grad)
    assert famo_weights(logits, losses.detach()).sum().item() == pytest.approx(1.0)


def test_famo_logit_gradient_is_the_softmax_vjp_of_the_log_loss_decrease():
    logits = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
    before = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    after = torch.tensor([0.9, 1.0, 0.5], dtype=torch.float64)
    delta = torch.log(before + 1e-8) - torch.log(after + 1e-8)
    (expected,) = torch.autograd.grad(torch.softmax(logits, 0), logits, grad_outputs=delta)
    torch.testing.assert_close(famo_logit_gradient(logits.detach(), before, after), expected)


def test_famo_shifts_weight_to_the_task_that_improved_least():
    J = torch.eye(2, dtype=torch.float64)
    values = torch.ones(2, dtype=torch.float64)
    # combiner_updates reports losses after each step of 0.9x (task t0) and 0.99x (task t1)
    updates, combiner = combiner_updates("famo", [J], [values], options={"lr": 0.025, "gamma": 0.0})
    torch.testing.assert_close(updates[0], torch.tensor([0.5, 0.5], dtype=torch.float64))  # logits start at 0
    # delta = (-log 0.9, -log 0.99): the softmax VJP is positive for t0, negative for t1, and
    # Adam's first step moves each logit by lr against its gradient's sign
    assert combiner.summary()["logits"] == {"t0": pytest.approx(-0.025), "t1": pytest.approx(0.025)}
    updates, combiner = combiner_updates("famo", [J, J], [values, values], options={"lr": 0.025, "gamma": 0.0})
    assert updates[1][1] > 0.5 > updates[1][0]
    assert combiner.summary()["extra_forward_passes"] == 4  # 2 tasks x 2 steps


# --- in a real run: the optimizer group, the epoch hook and the after-step hook -------------------

def test_learned_and_epoch_based_combiners_train_through_the_harness(tmp_path):
    from mtlbench.bench.cli import main
    recipes = "".join(f'[[recipes]]\nname = "{name}"\nsampler = "joint"\ncombiner = "{name}"\n'
                      for name in ("uw", "dwa", "famo"))
    suite = write_suite(tmp_path / "s.toml", recipes, train="epochs = 3\nbatch_size = 32\nlr = 2e-3")
    assert main(["run", str(suite), "--out", str(tmp_path / "out"), "--no-progress", "--jobs", "1"]) == 0
    record = {name: json.loads((tmp_path / "out" / f"tiny-test.{name}-seed0.json").read_text())["strategies"]["combiner"]
              for name in ("uw", "dwa", "famo")}
    assert any(abs(v) > 1e-3 for v in record["uw"]["log_variances"].values())  # trained by the run's optimizer
    assert len(record["dwa"]["epoch_mean_losses"]) == 2  # epochs 1 and 2 seen by the third
    steps = record["famo"]["steps"]
    assert record["famo"]["extra_forward_passes"] == 3 * steps  # one per task and step
    assert any(abs(v) > 1e-3 for v in record["famo"]["logits"].values())


# --- geometric loss strategy ----------------------------------------------------------------------

def test_gls_weights_by_hand():
    """L = (1, 4): the geometric mean is 2, so w = 2 / (2 * L) = (1, 0.25)."""
    from mtlbench.strategies.combiners.gls import gls_weights

    torch.testing.assert_close(gls_weights(torch.tensor([1.0, 4.0], dtype=torch.float64)),
                               torch.tensor([1.0, 0.25], dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e4])
def test_gls_update_is_the_gradient_of_the_geometric_mean(dtype, scale):
    """Its update equals autograd's gradient of (prod_t L_t)^(1/T), the paper's objective, with
    losses at tiny, unit and huge scales."""
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=dtype, requires_grad=True)
    targets = torch.randn(3, 5, dtype=dtype)

    def losses():
        return {f"t{i}": scale * ((theta - targets[i]) ** 2).sum() * (i + 1) for i in range(3)}
    expected = torch.autograd.grad(torch.stack(list(losses().values())).prod() ** (1 / 3), theta)[0]
    combiner = build_combiner("gls", ["t0", "t1", "t2"])
    combiner.backward(losses(), [theta], {}, IDENTITY_PIPELINE)
    torch.testing.assert_close(theta.grad, expected, rtol=1e-4 if dtype == torch.float32 else 1e-10, atol=0)


def test_gls_is_blind_to_one_task_s_loss_scale():
    """Multiplying one loss by 100 leaves the update's direction unchanged: that task's weight falls 100-fold
    relative to the others (all grow by the geometric mean's 100^(1/3))."""
    from mtlbench.strategies.combiners.gls import gls_weights

    losses = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    scaled = losses * torch.tensor([100.0, 1.0, 1.0], dtype=torch.float64)
    ratio = gls_weights(scaled) / gls_weights(losses)
    factor = 100.0 ** (1 / 3)  # the geometric mean grows by 100^(1/3)
    torch.testing.assert_close(ratio, torch.tensor([factor / 100, factor, factor], dtype=torch.float64))
    torch.testing.assert_close(gls_weights(torch.tensor([0.0, 1.0])).isfinite(), torch.tensor([True, True]))
