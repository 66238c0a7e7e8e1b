import pytest
import torch
from mtlbench.bench.data import Encoding, collate, tokenize
from mtlbench.bench.model import MultiTaskModel, pool
from mtlbench.tasks.builtin import QUORA, SST, STS


class Outputs:
    def __init__(self, hidden, layers=None):
        self.last_hidden_state = hidden
        self.hidden_states = layers
        self.pooler_output = None


def test_poolings_ignore_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, -100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool("cls", Outputs(hidden), mask).tolist() == [[1.0, 2.0]]
    assert pool("mean", Outputs(hidden), mask).tolist() == [[2.0, 3.0]]
    assert pool("max", Outputs(hidden), mask).tolist() == [[3.0, 4.0]]
    layers = tuple(hidden * k for k in range(1, 6))
    assert pool("last4_mean", Outputs(hidden, layers), mask).tolist() == [[4.0, 6.0, 6.0, 9.0, 8.0, 12.0, 10.0, 15.0]]
    with pytest.raises(ValueError, match="no pooler"):
        pool("pooler", Outputs(hidden), mask)


def _batch(tokenizer, spec, rows, mode):
    dataset = tokenize(rows, tokenizer, Encoding(mode, 32), __import__("pathlib").Path(
        __import__("os").environ["MTLBENCH_CACHE"]) / "tokens")
    return collate(dataset.to_list(), spec, tokenizer.pad_token_id)


PAIRS = [{"text_a": "the film is good", "text_b": "the movie is fine", "label": 1},
         {"text_a": "how do i fix the car ?", "text_b": "how do i sell the car ?", "label": 0}]


@pytest.mark.parametrize("pair_head", ["cosine", "concat", "concat_product"])
def test_bi_encoder_pairs_take_one_encoder_call(encoder, tokenizer, pair_head):
    model = MultiTaskModel(encoder, [SST, QUORA, STS], "mean", pair_head)
    calls = []
    encoder.register_forward_hook(lambda module, args, kwargs_out: calls.append(1))
    batch = _batch(tokenizer, QUORA, PAIRS, "bi")
    assert batch["input_ids"].shape[0] == 4  # both sides stacked
    output = model("quora", batch)
    assert len(calls) == 1
    assert output.predictions.shape == (2,) and output.loss.ndim == 0


def test_bi_encoder_matches_encoding_each_side_alone(encoder, tokenizer):
    model = MultiTaskModel(encoder, [QUORA], "mean", "concat_product").eval()
    batch = _batch(tokenizer, QUORA, PAIRS, "bi")
    pooled = model.encode(batch)
    side_a = _batch(tokenizer, SST, [{"text": r["text_a"], "label": 0} for r in PAIRS], "single")
    torch.testing.assert_close(pooled[:2], model.encode(side_a), atol=1e-5, rtol=1e-5)


def test_cross_encoder_and_regression_head(encoder, tokenizer):
    model = MultiTaskModel(encoder, [STS], "cls", "cross")
    batch = _batch(tokenizer, STS, [dict(r, label=float(3 * r["label"])) for r in PAIRS], "cross")
    assert "token_type_ids" in batch and batch["token_type_ids"].max() == 1
    output = model("sts", batch)
    assert output.predictions.dtype == torch.float32
    to_range = model.heads["sts"]
    torch.nn.init.zeros_(to_range.head[-1].weight)
    with torch.no_grad():
        for value, expected in ((-1.0, 0.0), (0.0, 2.5), (1.0, 5.0)):  # standardised output -> 0..5
            to_range.head[-1].bias.fill_(value)
            assert to_range(torch.randn(3, 32)).squeeze(-1).tolist() == [expected] * 3


@pytest.mark.parametrize("pair_head", ["cosine", "concat", "concat_product"])
def test_bi_encoder_regression_heads_predict_on_the_label_scale(encoder, tokenizer, pair_head):
    model = MultiTaskModel(encoder, [STS], "mean", pair_head).eval()
    batch = _batch(tokenizer, STS, [dict(r, label=float(3 * r["label"])) for r in PAIRS], "bi")
    output = model("sts", batch)
    assert output.predictions.shape == (2,) and output.predictions.dtype == torch.float32
    assert ((output.predictions > -0.5) & (output.predictions < 5.5)).all()  # starts near the range, not at 0


def test_shared_and_task_parameters_are_disjoint(encoder):
    model = MultiTaskModel(encoder, [SST, QUORA, STS], "mean", "concat_product")
    shared = {id(p) for p in model.shared_parameters()}
    per_task = model.task_parameters()
    assert set(per_task) == {"sst", "quora", "sts"}
    assert all(id(p) not in shared for params in per_task.values() for p in params)
    assert len(shared) + sum(len(v) for v in per_task.values()) == len(list(model.parameters()))


def test_trainable_split_follows_requires_grad_changes(encoder):
    model = MultiTaskModel(encoder, [SST, QUORA], "mean", "concat_product")
    everything = len(model.shared_parameters())
    assert model.shared_parameters() is model.shared_parameters()  # cached between steps
    embeddings = model.encoder.get_input_embeddings().weight
    embeddings.requires_grad_(False)  # what a freezing schedule does
    assert len(model.shared_parameters()) == everything - 1
    assert all(p is not embeddings for p in model.shared_parameters())
    model.heads["sst"].requires_grad_(False)
    assert model.task_parameters()["sst"] == [] and model.task_parameters()["quora"]
