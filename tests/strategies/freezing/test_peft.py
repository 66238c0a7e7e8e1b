"""LoRA (through peft) and BitFit on real training steps: exactly the adapters or biases and the
heads train, the base stays bit-for-bit, the trained-parameter count is peft's own, and every kind
of combiner takes the adapters as the shared set."""

import copy

import pytest
import torch

from tests.strategies.freezing.test_freezing import build, train_steps, unchanged

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("rank", [4, 16])
def test_lora_trained_parameter_count_is_peft_s_own(real_step, rank):
    model, _ = real_step
    twin = copy.deepcopy(model.encoder)
    build(model, "lora", rank=rank)
    encoder_trained = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    config = peft.LoraConfig(r=rank, lora_alpha=16.0, target_modules=["query", "key", "value", "dense"])
    trainable, _ = peft.get_peft_model(twin, config).get_nb_trainable_parameters()
    assert encoder_trained == trainable
    # hand count: each adapted d_out x d_in layer adds r (d_in + d_out)
    hidden, inner = model.encoder.config.hidden_size, model.encoder.config.intermediate_size
    layers, pooler = model.encoder.config.num_hidden_layers, hasattr(model.encoder, "pooler") and model.encoder.pooler
    per_layer = rank * (4 * 2 * hidden + 2 * (hidden + inner))  # q, k, v, attention.output; intermediate, output
    assert trainable == layers * per_layer + (rank * 2 * hidden if pooler else 0)
    heads = sum(p.numel() for p in model.heads.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable + heads


@pytest.mark.parametrize("combiner", ["sum", "pcgrad", "mgda", "uw", "nash_mtl", "famo"])
def test_lora_trains_adapters_and_heads_and_keeps_the_base_bit_for_bit(real_step, combiner):
    model, batches = real_step
    freezing = build(model, "lora", rank=4)
    assert {n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("heads.")} == \
        {n for n, _ in model.named_parameters() if "lora_" in n}
    assert all("lora_" in n for n, p in model.encoder.named_parameters() if p in set(model.shared_parameters()))
    before, after = train_steps(model, batches, freezing, combiner=combiner)
    frozen = unchanged(before, after)
    assert {n for n in before if not n.startswith("heads.") and "lora_" not in n} <= frozen
    # B starts at zero and moves (the pooler's adapter too would, were the pooler read: mean pooling is used)
    assert not ({n for n in before if "lora_B" in n and "pooler" not in n} & frozen)


def test_lora_starts_from_the_pretrained_function(real_step):
    model, batches = real_step
    before = {t: model(t, b).logits.detach() for t, b in batches.items()}
    build(model, "lora", rank=8)
    for task, batch in batches.items():
        torch.testing.assert_close(model(task, batch).logits, before[task])  # B = 0: W + BA = W


def test_bitfit_trains_the_encoder_biases_and_the_heads(real_step):
    model, batches = real_step
    before, after = train_steps(model, batches, build(model, "bitfit"))
    frozen = unchanged(before, after)
    encoder = {n for n in before if not n.startswith("heads.")}
    assert {n for n in encoder if not n.endswith(".bias")} <= frozen
    moved = {n for n in encoder if n.endswith(".bias")} - frozen
    assert moved and "encoder.embeddings.LayerNorm.bias" in {n for n in encoder if n.endswith(".bias")}


def test_lora_without_the_extra_is_one_line_naming_it(real_step, monkeypatch):
    import builtins

    from mtlbench.tasks.errors import UserError
    real_import = builtins.__import__

    def no_peft(name, *args, **kwargs):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_peft)
    model, _ = real_step
    with pytest.raises(UserError, match=r"pip install 'mtlbench\[peft\]'"):
        build(model, "lora")
