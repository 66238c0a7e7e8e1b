import torch
from mtlbench.bench import data
from mtlbench.bench.data import Encoding, TaskBatches, tokenize
from mtlbench.tasks.builtin import SST
from mtlbench.tasks.synthetic import SyntheticConfig, generate


def test_second_tokenisation_loads_the_cache(tokenizer, tmp_path, monkeypatch):
    rows = generate("sst", SyntheticConfig(sst_train=40)).rows["train"]
    calls = []
    original = data._tokenize_function

    def counting(tok, encoding):
        fn = original(tok, encoding)
        return lambda batch, indices=None: (calls.append(1), fn(batch, indices))[1]
    monkeypatch.setattr(data, "_tokenize_function", counting)
    first = tokenize(rows, tokenizer, Encoding("single", 32), tmp_path)
    assert calls
    calls.clear()
    second = tokenize(rows, tokenizer, Encoding("single", 32), tmp_path)
    assert calls == [] and second.to_list() == first.to_list()
    tokenize(rows[:-1], tokenizer, Encoding("single", 32), tmp_path)  # other rows: a new cache entry
    assert calls


def test_batches_are_dynamically_padded_and_length_grouped(tokenizer, tmp_path):
    rows = generate("sst", SyntheticConfig(sst_train=400)).rows["train"]
    dataset = tokenize(rows, tokenizer, Encoding("single", 64), tmp_path)
    batches = TaskBatches(dataset, SST, 16, tokenizer.pad_token_id, torch.Generator().manual_seed(0))
    assert len(batches) == 25
    stream = batches.stream()
    epoch = [next(stream) for _ in range(len(batches))]
    assert sum(b["labels"].shape[0] for b in epoch) == 400
    lengths = [b["attention_mask"].sum(1) for b in epoch]
    widths = [b["input_ids"].shape[1] for b in epoch]
    assert all(w == int(n.max()) for w, n in zip(widths, lengths))  # padded to the batch's longest only
    padding = sum(int((b["attention_mask"] == 0).sum()) for b in epoch)
    random_padding = sum(int((torch.tensor(d["length"]).max() - torch.tensor(d["length"])).sum())
                         for d in (dataset[i:i + 16] for i in range(0, 400, 16)))
    assert padding < random_padding / 2  # grouping by length removes most padding


def test_attention_mask_follows_lengths_even_when_pad_is_a_real_token():
    from mtlbench.tasks.builtin import QUORA
    batch = data.collate([{"input_ids_a": [5, 0, 7], "input_ids_b": [5], "label": 1},
                          {"input_ids_a": [5], "input_ids_b": [5, 6], "label": 0}], QUORA, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 0, 7], [5, 0, 0], [5, 0, 0], [5, 6, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert batch["labels"].dtype == torch.float
