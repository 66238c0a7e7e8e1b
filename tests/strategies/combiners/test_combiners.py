import pytest
import torch
from mtlbench.strategies import registry
from mtlbench.strategies.base import IDENTITY_PIPELINE
from mtlbench.tasks.errors import UserError

TASKS = ["a", "b"]


def make(name, **options):
    cls = registry.get("combiner", name)
    return cls(registry.make_options(cls, options, "test"), TASKS, torch.Generator().manual_seed(0))


def _setup():
    torch.manual_seed(0)
    shared = torch.nn.Parameter(torch.randn(3))
    heads = {t: torch.nn.Parameter(torch.randn(3)) for t in TASKS}
    x = torch.randn(3)

    def losses():
        return {t: ((shared + heads[t]) * x * (i + 1)).pow(2).sum() for i, t in enumerate(TASKS)}
    return shared, heads, losses


def _grads_of(loss_fn, params):
    return torch.autograd.grad(loss_fn, params)


def test_sum_leaves_the_gradient_of_the_summed_loss():
    shared, heads, losses = _setup()
    expected = _grads_of(sum(losses().values()), [shared, *heads.values()])
    make("sum").backward(losses(), [shared], {t: [p] for t, p in heads.items()},
                                                                    IDENTITY_PIPELINE)
    for got, want in zip([shared.grad, *[h.grad for h in heads.values()]], expected):
        torch.testing.assert_close(got, want)


def test_weighted_scales_each_task_loss():
    shared, heads, losses = _setup()
    values = losses()
    expected = _grads_of(2.0 * values["a"] + 0.5 * values["b"], [shared, *heads.values()])
    make("weighted", weights={"a": 2.0, "b": 0.5}).backward(losses(), [shared], {t: [p] for t, p in heads.items()},
                                                                    IDENTITY_PIPELINE)
    for got, want in zip([shared.grad, *[h.grad for h in heads.values()]], expected):
        torch.testing.assert_close(got, want)


def test_weighted_defaults_unnamed_tasks_to_one_and_records_weights():
    assert make("weighted", weights={"a": 3.0}).summary() == {"weights": {"a": 3.0, "b": 1.0}}


def test_weighted_rejects_unknown_tasks_with_the_nearest_name():
    with pytest.raises(UserError, match="unknown task 'aa'.*did you mean 'a'"):
        make("weighted", weights={"aa": 1.0})
    with pytest.raises(UserError, match=">= 0"):
        make("weighted", weights={"a": -1.0})
