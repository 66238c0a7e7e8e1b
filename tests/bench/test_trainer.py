import random

import pytest
import torch

from bench.config import Recipe, StrategySpec
from bench.context import build_strategies
from bench.data import Encoding, TaskBatches, tokenize
from bench.model import MultiTaskModel
from bench.settings import TrainSettings
from bench.trainer import RunParts, train
from tasks.builtin import SST
from tasks.synthetic import SyntheticConfig, generate


def test_gradients_are_clipped_before_the_optimizer_step(encoder, tokenizer, tmp_path, monkeypatch):
    rows = generate("sst", SyntheticConfig(sst_train=64, sst_dev=16)).rows
    train_set = tokenize(rows["train"], tokenizer, Encoding("single", 32), tmp_path)
    dev_set = tokenize(rows["dev"], tokenizer, Encoding("single", 32), tmp_path)
    model = MultiTaskModel(encoder, [SST], "mean", "concat_product")
    batches = {"sst": TaskBatches(train_set, SST, 16, tokenizer.pad_token_id, torch.Generator().manual_seed(0))}
    recipe = Recipe("rr", StrategySpec.make("sampler", "round_robin"), StrategySpec.make("combiner", "sum"), (),
                    StrategySpec.make("freezing", "none"), "mean", "concat_product")
    norms = []
    original = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return original(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    settings = TrainSettings(epochs=1, lr=1e-3, max_grad_norm=0.01)
    parts = RunParts(model, build_strategies(recipe, model, batches, 0), batches, {"sst": dev_set},
                     pad_id=tokenizer.pad_token_id)
    outcome = train(parts, settings, torch.device("cpu"))
    assert len(norms) == 4 == outcome.train["steps"]
    assert max(norms) <= 0.01 * (1 + 1e-4)
    assert outcome.history[0]["train_loss"]["sst"] > 0  # the training loss is accumulated, not dropped
    random.seed(0)


@pytest.mark.parametrize("device", ["cpu"])
def test_device_auto_selects_cuda_only_when_present(device):
    from bench.trainer import select_device
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device(device).type == device


def test_after_step_hands_the_combiner_the_tasks_own_losses_before_and_after_the_step(real_step):
    """With a regulariser, the loss the combiner weighs includes its terms; the before/after pair a
    combiner compares (FAMO) is the task's own loss on both sides, on the same batch."""
    from bench.step import Strategies, make_optimizer, training_step
    from strategies import registry

    model, batches = real_step
    sum_cls, fgm_cls = registry.get("combiner", "sum"), registry.get("regularizer", "fgm")
    seen = {}

    class Recording(sum_cls):
        def after_step(self, losses_before, losses_after):
            seen["before"], seen["after"] = dict(losses_before), losses_after()

    expected_before = {t: model(t, b).loss.detach() for t, b in batches.items()}
    strategies = Strategies(None, Recording(sum_cls.Options(), list(batches), torch.Generator()),
                            [fgm_cls(fgm_cls.Options(epsilon=0.01), torch.Generator())], None)
    optimizer = make_optimizer([{"params": list(model.parameters()), "lr": 1e-2}])
    training_step(model, strategies, batches, optimizer)
    after_by_hand = {t: model(t, b).loss.detach() for t, b in batches.items()}
    for task in batches:
        torch.testing.assert_close(seen["before"][task], expected_before[task])  # no FGM term in it
        torch.testing.assert_close(seen["after"][task], after_by_hand[task])
        assert not seen["after"][task].requires_grad
        assert seen["after"][task] != seen["before"][task]  # evaluated after the parameters moved
