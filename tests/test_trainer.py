import random

import pytest
import torch

from bench.config import Recipe, StrategySpec
from bench.data import Encoding, TaskBatches, tokenize
from bench.model import MultiTaskModel
from bench.runner import build_strategies
from bench.trainer import TrainSettings, train
from tasks.spec import SST
from tasks.synthetic import SyntheticConfig, generate


def test_gradients_are_clipped_before_the_optimizer_step(encoder, tokenizer, tmp_path, monkeypatch):
    rows = generate("sst", SyntheticConfig(sst_train=64, sst_dev=16)).rows
    train_set = tokenize(rows["train"], tokenizer, Encoding("single", 32), tmp_path)
    dev_set = tokenize(rows["dev"], tokenizer, Encoding("single", 32), tmp_path)
    model = MultiTaskModel(encoder, [SST], "mean", "concat_product")
    batches = {"sst": TaskBatches(train_set, SST, 16, tokenizer.pad_token_id, torch.Generator().manual_seed(0))}
    recipe = Recipe("rr", StrategySpec("round_robin"), StrategySpec("sum"), [], StrategySpec("none"), "mean",
                    "concat_product")
    norms = []
    original = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item())
        return original(self, *args, **kwargs)
    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    settings = TrainSettings(epochs=1, lr=1e-3, max_grad_norm=0.01)
    outcome = train(model, build_strategies(recipe, model, batches, 0), batches, {"sst": dev_set}, settings,
                    torch.device("cpu"), tokenizer.pad_token_id, progress=False)
    assert len(norms) == 4 == outcome.train["steps"]
    assert max(norms) <= 0.01 * (1 + 1e-4)
    assert outcome.history[0]["train_loss"]["sst"] > 0  # the training loss is accumulated, not dropped
    random.seed(0)


@pytest.mark.parametrize("device", ["cpu"])
def test_device_auto_selects_cuda_only_when_present(device):
    from bench.trainer import select_device
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device(device).type == device
