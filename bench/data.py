"""Tokenised, cached datasets and batches (dynamic padding, length-grouped sampling).

Tokenisation goes through `datasets.Dataset.map` with a cache file named by a hash of the rows,
the tokenizer and the settings, so a second run loads the Arrow file instead of re-tokenising.

Token tasks: the words are tokenised as pre-split words and each word's tag goes on its first
sub-word, -100 (not scored) on the others and on special tokens, from the fast tokenizer's
`word_ids()`. MLM: `DataCollatorForLanguageModeling`'s rule (15 % of the real tokens; of those 80 %
[MASK], 10 % a random token, 10 % kept). Training batches are masked afresh from the run's seed;
dev and test are masked once, from a fixed seed, so every run is scored on the same positions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from mtlbench.tasks.spec import TaskKind, TaskSpec

IGNORE = -100  # label of a position that is not scored (special tokens, later sub-words, unmasked)
EVAL_MASK_SEED = 20240  # dev/test MLM masks: the same for every run and recipe


@dataclass(frozen=True)
class Encoding:
    """How a task's text is laid out for the encoder."""

    # "single", "bi" (each side alone), "cross" (the pair as one input), "words" (pre-split words
    # with tags aligned to sub-words), "mlm" (text, masked per batch) or "mlm_fixed" (masked once)
    pair_mode: str
    max_length: int


def encoding_for(spec: TaskSpec, pair_mode: str, split: str, max_length: int) -> Encoding:
    if spec.kind.is_pair:
        return Encoding(pair_mode, max_length)
    if spec.kind is TaskKind.MLM:
        return Encoding("mlm" if split == "train" else "mlm_fixed", max_length)
    return Encoding("words" if spec.kind.is_token_level else "single", max_length)


def align_labels(word_ids: list[int | None], tags: list[int] | None) -> list[int]:
    """A word's tag on its first sub-word; -100 on later sub-words and special tokens. Without
    tags (an unlabelled split) the first sub-words get 0, so that predictions know where to go."""
    labels, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            labels.append(IGNORE)
        else:
            labels.append(tags[word] if tags is not None else 0)
        previous = word
    return labels


class Masker:
    """Masks a batch by `DataCollatorForLanguageModeling`'s rule, from its own generator (the
    collator's `seed` argument is not used: it re-seeds differently in worker processes)."""

    def __init__(self, tokenizer, seed: int, probability: float = 0.15):
        from transformers import DataCollatorForLanguageModeling

        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)
        self.collator.generator = torch.Generator().manual_seed(seed)
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked ids, labels: the original id at chosen positions, -100 elsewhere)."""
        protected = ~attention_mask.bool() | torch.isin(input_ids, self.special_ids)
        return self.collator.torch_mask_tokens(input_ids.clone(), protected)

    def with_seed(self, seed: int) -> Masker:
        """The same rule from a generator of its own (this one's draws are left as they are)."""
        twin = copy.copy(self)
        twin.collator = copy.copy(self.collator)
        twin.collator.generator = torch.Generator().manual_seed(seed)
        return twin


def tokenizer_fingerprint(tokenizer) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([type(tokenizer).__name__, tokenizer.name_or_path.rsplit("/", 1)[-1], vocab])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rows_fingerprint(rows: list[dict]) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16]


def _tokenize_function(tokenizer, encoding: Encoding):
    def tokenize(batch, indices=None):
        if encoding.pair_mode == "words":
            out = tokenizer(batch["tokens"], is_split_into_words=True, truncation=True, max_length=encoding.max_length)
            tags = batch.get("tags") or [None] * len(batch["tokens"])
            return {"input_ids": out["input_ids"], "labels": [align_labels(out.word_ids(i), t) for i, t in enumerate(tags)],
                    "length": [len(x) for x in out["input_ids"]]}
        if encoding.pair_mode in ("mlm", "mlm_fixed"):
            ids = tokenizer(batch["text"], truncation=True, max_length=encoding.max_length)["input_ids"]
            result = {"input_ids": ids, "length": [len(x) for x in ids]}
            if encoding.pair_mode == "mlm_fixed":
                masked, labels, masker = [], [], Masker(tokenizer, EVAL_MASK_SEED)
                for index, row in zip(indices, ids):  # reseeded per row: stable under any batching
                    masker.collator.generator.manual_seed(EVAL_MASK_SEED + index)
                    row_ids, row_labels = masker(torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long))
                    masked.append(row_ids[0].tolist())
                    labels.append(row_labels[0].tolist())
                result.update(input_ids=masked, labels=labels)
            return result
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
        + ([EVAL_MASK_SEED] if encoding.pair_mode == "mlm_fixed" else [])
    ).encode()).hexdigest()[:24]
    cache_file = cache_dir / f"tokens-{key}.arrow"
    labels = [row["label"] for row in rows] if rows and "label" in rows[0] else None
    texts = {k: [row[k] for row in rows] for k in ("text", "text_a", "text_b", "tokens", "tags")
             if rows and k in rows[0]}
    if labels is not None:
        texts["label"] = labels
    dataset = datasets.Dataset.from_dict(texts)
    return dataset.map(
        _tokenize_function(tokenizer, encoding), batched=True, batch_size=1000, with_indices=True,
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
    elif "labels" in examples[0]:  # per token
        batch["labels"] = _pad([e["labels"] for e in examples], IGNORE)[0]
    return batch


class TaskBatches:
    """Training batches of one task: an endless stream, reshuffled (length-grouped) every pass."""

    def __init__(self, dataset, spec: TaskSpec, batch_size: int, pad_id: int, generator: torch.Generator,
                 masker: Masker | None = None):
        self.masker = masker  # MLM: masks each batch as it is drawn
        self.rows = dataset.to_list()
        self.lengths = [row["length"] for row in self.rows]  # plain ints: indexing a Column is slow
        self.spec = spec
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.generator = generator

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def stream(self) -> BatchStream:
        return BatchStream(self)

    def independent(self, draw: int) -> TaskBatches:
        """The same rows shuffled by a generator of their own (seeded from this one's seed and
        `draw`): a second stream of training batches independent of the first (double sampling,
        a held-out batch). MLM masks still come from the task's one masker."""
        twin = copy.copy(self)
        twin.generator = torch.Generator().manual_seed(self.generator.initial_seed() + 7919 * (draw + 1))
        return twin


class BatchStream:
    """A task's endless batch stream whose position is state: a checkpoint taken between steps
    (`state_dict`) continues the same sequence of batches and MLM masks when loaded."""

    def __init__(self, batches: TaskBatches):
        self.batches = batches
        self.order: list[int] = []  # this pass's row order; a new one is drawn when it runs out
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        source = self.batches
        if self.position >= len(self.order):
            from transformers.trainer_pt_utils import get_length_grouped_indices  # 1 s to import: when used

            self.order = get_length_grouped_indices(source.lengths, source.batch_size, generator=source.generator)
            self.position = 0
        chosen = self.order[self.position:self.position + source.batch_size]
        self.position += source.batch_size
        batch = collate([source.rows[i] for i in chosen], source.spec, source.pad_id)
        if source.masker is not None:
            batch["input_ids"], batch["labels"] = source.masker(batch["input_ids"], batch["attention_mask"])
        return batch

    def state_dict(self) -> dict:
        """The pass's order and position, and the MLM masker's generator. The shuffling generator
        is shared by a run's tasks; the trainer saves it once."""
        masker = self.batches.masker
        return {"order": list(self.order), "position": self.position,
                **({"masker": masker.collator.generator.get_state()} if masker is not None else {})}

    def load_state_dict(self, saved: dict) -> None:
        self.order, self.position = list(saved["order"]), int(saved["position"])
        if "masker" in saved:
            self.batches.masker.collator.generator.set_state(saved["masker"])


def eval_batches(dataset, spec: TaskSpec, batch_size: int, pad_id: int):
    """Batches sorted by length (least padding), with the original row indices."""
    rows = dataset.to_list()
    lengths = [row["length"] for row in rows]
    order = sorted(range(len(rows)), key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        yield chunk, collate([rows[i] for i in chunk], spec, pad_id)
