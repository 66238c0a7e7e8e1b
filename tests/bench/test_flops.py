"""Model FLOPs (bench.flops) against PyTorch's own count of a BERT-style training step."""

from __future__ import annotations

import pytest
import torch
from mtlbench.bench import flops
from mtlbench.bench.model import MultiTaskModel
from mtlbench.tasks.builtin import SST
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel


@pytest.mark.parametrize("hidden, layers, rows, length", [(64, 2, 8, 40), (128, 3, 4, 96)])
def test_the_formula_matches_the_counted_flops_of_a_forward_and_backward(hidden, layers, rows, length):
    config = BertConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=4 * hidden, vocab_size=500, max_position_embeddings=128)
    model = MultiTaskModel(BertModel(config, add_pooling_layer=False), [SST], "mean", "concat_product")
    ids = torch.randint(5, 500, (rows, length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 5, (rows,))}
    with FlopCounterMode(display=False) as counter:
        model("sst", batch).loss.backward()
    estimate = flops.batch_flops(flops.per_token(model), ids)
    assert estimate == pytest.approx(counter.get_total_flops(), rel=0.05)


def test_mfu_needs_a_known_peak(monkeypatch):
    cpu = torch.device("cpu")
    assert flops.summary(2e12, 2.0, cpu, "bf16") == {"model_flops": 2e12, "model_tflops_per_second": 1.0,
                                                     "peak_tflops": None, "mfu": None}
    monkeypatch.setenv("MTLBENCH_PEAK_TFLOPS", "4")
    assert flops.summary(2e12, 2.0, cpu, "bf16")["mfu"] == 0.25
