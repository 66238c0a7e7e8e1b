"""The supervised contrastive term against a naive double loop of the same formula."""

import math

import pytest
import torch
from mtlbench.strategies import registry
from mtlbench.strategies.base import TaskStep
from mtlbench.strategies.regularizers.contrastive import supervised_contrastive_loss
from mtlbench.tasks.builtin import QUORA, SST, STS
from mtlbench.tasks.errors import UserError

from tests.conftest import write_suite


def naive_loss(first, second, positive, temperature, hard_negatives):
    """-mean over positive anchors of log softmax, one cosine at a time."""
    def cos(u, v):
        return (u @ v / (u.norm() * v.norm())).item()

    total, anchors = 0.0, 0
    for i in range(len(first)):
        if not positive[i]:
            continue
        denominator = sum(math.exp(cos(first[i], second[j]) / temperature)
                          for j in range(len(second)) if hard_negatives or positive[j])
        total += -math.log(math.exp(cos(first[i], second[i]) / temperature) / denominator)
        anchors += 1
    return total / anchors


@pytest.mark.parametrize("hard_negatives", [True, False])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
def test_vectorised_loss_equals_the_double_loop(hard_negatives, temperature):
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(6, 5, generator=generator, dtype=torch.float64), torch.randn(6, 5, generator=generator, dtype=torch.float64)
    positive = torch.tensor([True, False, True, True, False, True])
    got = supervised_contrastive_loss(first, second, positive, temperature, hard_negatives).item()
    assert got == pytest.approx(naive_loss(first, second, positive, temperature, hard_negatives), rel=1e-9)


def test_hard_negatives_only_add_candidates():
    first = torch.eye(3, dtype=torch.float64)
    second = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.9, 0.1, 0]], dtype=torch.float64)
    positive = torch.tensor([True, True, False])  # the third pair's b nearly equals a_0: a hard negative
    without = supervised_contrastive_loss(first, second, positive, 0.1, hard_negatives=False)
    with_hard = supervised_contrastive_loss(first, second, positive, 0.1, hard_negatives=True)
    assert with_hard > without


def test_no_positive_pair_gives_zero_with_a_gradient_path():
    first = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive_loss(first, torch.randn(3, 4), torch.zeros(3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(first.grad, torch.zeros(3, 4))


def _step(spec, labels, pooled):
    return TaskStep(task=spec.name, loss=torch.tensor(0.0), pooled=pooled, labels=labels,
                    input_embeddings=torch.zeros(1), padding_mask=torch.ones(1),
                    loss_from_embeddings=lambda e: e.sum(), spec=spec)


def make(**options):
    cls = registry.get("regularizer", "contrastive")
    return cls(registry.make_options(cls, options, "test"), torch.Generator())


def test_term_uses_the_pair_tasks_pooled_vectors_and_labels():
    pooled = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    regularizer = make(weight=0.5, temperature=0.1)
    quora = regularizer.terms(_step(QUORA, torch.tensor([1.0, 0.0, 1.0, 1.0]), pooled))
    expected = supervised_contrastive_loss(pooled[:4], pooled[4:], torch.tensor([True, False, True, True]), 0.1)
    torch.testing.assert_close(quora["contrastive"], 0.5 * expected)
    sts = regularizer.terms(_step(STS, torch.tensor([4.5, 3.9, 4.0, 0.5]), pooled))
    expected = supervised_contrastive_loss(pooled[:4], pooled[4:], torch.tensor([True, False, True, False]), 0.1)
    torch.testing.assert_close(sts["contrastive"], 0.5 * expected)
    assert regularizer.terms(_step(SST, torch.tensor([1, 2, 3, 4]), pooled[:4])) == {}
    assert regularizer.extra_forward_passes == 0 and regularizer.extra_backward_passes == 0


def test_cross_encoder_pairs_and_bad_options_are_refused():
    with pytest.raises(UserError, match="bi-encoder"):
        make().terms(_step(QUORA, torch.tensor([1.0, 0.0]), torch.randn(2, 4)))
    with pytest.raises(UserError, match="temperature must be > 0"):
        make(temperature=0.0)


@pytest.mark.parametrize("tasks, pair_head, message", [
    ('["sst", "quora", "sts"]', "cross", "pair_head = 'cross' encodes each pair as one input"),
    ('["sst"]', "concat", "the recipe's tasks (sst) have none"),
])
def test_contrastive_without_bi_encoder_pairs_fails_at_config_time(tmp_path, capsys, tasks, pair_head, message):
    from mtlbench.bench.cli import main
    suite = write_suite(tmp_path / "s.toml", f'[[recipes]]\nname = "x"\nsampler = "round_robin"\n'
                        f'regularizers = ["contrastive"]\npair_head = "{pair_head}"\n')
    suite.write_text(suite.read_text().replace('tasks = ["sst", "quora", "sts"]', f"tasks = {tasks}"))
    assert main(["run", str(suite), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
