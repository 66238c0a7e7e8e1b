import random

import pytest
import torch
from mtlbench.bench.config import Recipe, StrategySpec
from mtlbench.bench.context import build_strategies
from mtlbench.bench.data import Encoding, TaskBatches, tokenize
from mtlbench.bench.model import MultiTaskModel
from mtlbench.bench.settings import TrainSettings
from mtlbench.bench.trainer import RunParts, train
from mtlbench.tasks.builtin import SST
from mtlbench.tasks.synthetic import SyntheticConfig, generate


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
    from mtlbench.bench.trainer import select_device
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device(device).type == device


def test_after_step_hands_the_combiner_the_tasks_own_losses_before_and_after_the_step(real_step):
    """With a regulariser, the loss the combiner weighs includes its terms; the before/after pair a
    combiner compares (FAMO) is the task's own loss on both sides, on the same batch."""
    from mtlbench.bench.step import Strategies, make_optimizer, training_step
    from mtlbench.strategies import registry

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


def _two_task_run(encoder, tokenizer, cache):
    """A small SST + STS run's parts, seeded: proportional sampling (so an epoch ends mid-pass of a
    task's batches) and gradual unfreezing (a schedule with state)."""
    from mtlbench.bench.trainer import seed_everything
    from mtlbench.tasks.builtin import STS

    seed_everything(0)
    config = SyntheticConfig(sst_train=48, sst_dev=16, sts_train=40, sts_dev=16)
    model = MultiTaskModel(encoder, [SST, STS], "mean", "concat_product", dropout=0.1)
    train, dev, generator = {}, {}, torch.Generator().manual_seed(0)
    for spec, mode in ((SST, "single"), (STS, "bi")):
        rows = generate(spec.name, config).rows
        train[spec.name] = TaskBatches(tokenize(rows["train"], tokenizer, Encoding(mode, 32), cache), spec, 16,
                                       tokenizer.pad_token_id, generator)
        dev[spec.name] = tokenize(rows["dev"], tokenizer, Encoding(mode, 32), cache)
    recipe = Recipe("r", StrategySpec.make("sampler", "proportional"), StrategySpec.make("combiner", "sum"), (),
                    StrategySpec.make("freezing", "gradual_unfreezing"), "mean", "concat_product")
    return RunParts(model, build_strategies(recipe, model, train, 0, epochs=3), train, dev,
                    pad_id=tokenizer.pad_token_id)


def test_the_loop_state_saved_after_an_epoch_continues_exactly(tiny_encoder_path, tokenizer, tmp_path):
    """TrainingLoop.state_dict() after epoch 1, through torch.save and torch.load(weights_only=True)
    as a checkpoint keeps it, loaded into a fresh loop over the same weights, continues to the same
    history and weights as the loop that never stopped (dropout on, so the random generators are
    part of what must come back)."""
    import io

    from mtlbench.bench import backbone
    from mtlbench.bench.trainer import TrainingLoop

    settings = TrainSettings(epochs=3, lr=2e-3)
    whole = _two_task_run(backbone.load_encoder(tiny_encoder_path), tokenizer, tmp_path)
    saved = {}

    def keep(epoch, state_dict):
        if epoch == 1:
            buffer = io.BytesIO()
            torch.save({"state": state_dict(), "weights": whole.model.state_dict()}, buffer)
            buffer.seek(0)
            saved.update(torch.load(buffer, weights_only=True))
    straight = TrainingLoop(whole, settings, torch.device("cpu")).run(on_epoch_end=keep)

    resumed_parts = _two_task_run(backbone.load_encoder(tiny_encoder_path), tokenizer, tmp_path)
    resumed_parts.model.load_state_dict(saved["weights"])
    loop = TrainingLoop(resumed_parts, settings, torch.device("cpu"))
    loop.load_state_dict(saved["state"])
    assert loop.state.epoch == 1 and loop.state.step == straight.history[0]["step"]
    resumed = loop.run()
    assert resumed.history == straight.history and resumed.trainable == straight.trainable
    assert resumed.train["resumed_from_epoch"] == 1 and resumed.train["steps"] == straight.train["steps"]
    for (name, a), b in zip(whole.model.state_dict().items(), resumed_parts.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_diverged_carries_the_place_it_was_raised_at(real_step):
    from mtlbench.bench.step import Diverged, StepPlace, Strategies, make_optimizer, training_step
    from mtlbench.strategies import registry

    model, batches = real_step
    batches = {"sts": {**batches["sts"], "labels": batches["sts"]["labels"] * float("nan")}}
    cls = registry.get("combiner", "sum")
    strategies = Strategies(None, cls(cls.Options(), ["sts"], torch.Generator()), [], None)
    with pytest.raises(Diverged) as raised:
        training_step(model, strategies, batches, make_optimizer([{"params": list(model.parameters())}]),
                      at=StepPlace(epoch=3, step=17))
    assert raised.value.place() == {"what": "non-finite loss (nan)", "task": "sts", "epoch": 3, "step": 17}
    assert str(raised.value) == "non-finite loss (nan) at task 'sts', epoch 3, step 17"
