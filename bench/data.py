"""Tokenised, cached datasets and batches (dynamic padding, length-grouped sampling).

Tokenisation goes through `datasets.Dataset.map` with a cache file named by a hash of the rows,
the tokenizer and the settings, so a second run loads the Arrow file instead of re-tokenising.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.trainer_pt_utils import get_length_grouped_indices

from tasks.spec import TaskSpec


@dataclass(frozen=True)
class Encoding:
    """How a task's text is laid out for the encoder."""

    pair_mode: str  # "single", "bi" (each side alone) or "cross" (the pair as one input)
    max_length: int


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([type(tokenizer).__name__, tokenizer.name_or_path.rsplit("/", 1)[-1], vocab])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rows_fingerprint(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def _tokenize_function(tokenizer, encoding: Encoding):
    def tokenize(batch):
        if encoding.pair_mode == "single":
            out = tokenizer(batch["text"], truncation=True, max_length=encoding.max_length)
            return {"input_ids": out["input_ids"], "length": [len(x) for x in out["input_ids"]]}
        if encoding.pair_mode == "cross":
            out = tokenizer(batch["text_a"], batch["text_b"], truncation=True, max_length=encoding.max_length,
                            return_token_type_ids=True)
            return {"input_ids": out["input_ids"], "token_type_ids": out["token_type_ids"],
                    "length": [len(x) for x in out["input_ids"]]}
        a = tokenizer(batch["text_a"], truncation=True, max_length=encoding.max_length)["input_ids"]
        b = tokenizer(batch["text_b"], truncation=True, max_length=encoding.max_length)["input_ids"]
        return {"input_ids_a": a, "input_ids_b": b, "length": [max(len(x), len(y)) for x, y in zip(a, b)]}

    return tokenize


def tokenize(rows: list[dict], tokenizer, encoding: Encoding, cache_dir: Path):
    """A `datasets.Dataset` of token ids, labels and lengths, cached on disk."""
    import datasets

    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(json.dumps(
        [_rows_fingerprint(rows), tokenizer_fingerprint(tokenizer), encoding.pair_mode, encoding.max_length]
    ).encode()).hexdigest()[:24]
    cache_file = cache_dir / f"tokens-{key}.arrow"
    labels = [row["label"] for row in rows] if rows and "label" in rows[0] else None
    texts = {k: [row[k] for row in rows] for k in ("text", "text_a", "text_b") if rows and k in rows[0]}
    if labels is not None:
        texts["label"] = labels
    dataset = datasets.Dataset.from_dict(texts)
    return dataset.map(
        _tokenize_function(tokenizer, encoding), batched=True, batch_size=1000,
        remove_columns=[c for c in dataset.column_names if c != "label"],
        cache_file_name=str(cache_file), load_from_cache_file=True,
    ).with_format(None)


def _pad(sequences: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids padded to `length` (default: the longest), and the mask of real tokens.

    The mask comes from the lengths, not from `ids != pad_id`: some tokenizers pad with a real token.
    """
    length = length or max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def collate(examples: list[dict], spec: TaskSpec, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest example of the batch (dynamic padding)."""
    batch: dict[str, torch.Tensor] = {}
    if "input_ids_a" in examples[0]:
        # Both sides padded to one length so the encoder can take them in one call, side A first.
        length = max(max(len(e["input_ids_a"]), len(e["input_ids_b"])) for e in examples)
        ids_a, mask_a = _pad([e["input_ids_a"] for e in examples], pad_id, length)
        ids_b, mask_b = _pad([e["input_ids_b"] for e in examples], pad_id, length)
        batch["input_ids"], batch["attention_mask"] = torch.cat([ids_a, ids_b]), torch.cat([mask_a, mask_b])
    else:
        batch["input_ids"], batch["attention_mask"] = _pad([e["input_ids"] for e in examples], pad_id)
        if "token_type_ids" in examples[0]:
            batch["token_type_ids"] = _pad([e["token_type_ids"] for e in examples], 0)[0]
    if "label" in examples[0]:
        dtype = torch.float if spec.kind.value == "pair_regression" or spec.num_labels == 1 else torch.long
        batch["labels"] = torch.tensor([e["label"] for e in examples], dtype=dtype)
    return batch


class TaskBatches:
    """Training batches of one task: an endless stream, reshuffled (length-grouped) every pass."""

    def __init__(self, dataset, spec: TaskSpec, batch_size: int, pad_id: int, generator: torch.Generator):
        self.rows = dataset.to_list()
        self.lengths = [row["length"] for row in self.rows]  # plain ints: indexing a Column is slow
        self.spec = spec
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def stream(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            order = get_length_grouped_indices(self.lengths, self.batch_size, generator=self.generator)
            for start in range(0, len(order), self.batch_size):
                yield collate([self.rows[i] for i in order[start:start + self.batch_size]], self.spec, self.pad_id)


def eval_batches(dataset, spec: TaskSpec, batch_size: int, pad_id: int):
    """Batches sorted by length (least padding), with the original row indices."""
    rows = dataset.to_list()
    lengths = [row["length"] for row in rows]
    order = sorted(range(len(rows)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield chunk, collate([rows[i] for i in chunk], spec, pad_id)
