"""What the encoder will see of each task's data, measured when the data is loaded: the share of
tokens its tokenizer does not know, the share of rows longer than max_length (cut), and the rows a
split shares with train. An encoder whose tokenizer knows none of the words trains to chance and
says nothing; so these are shown by `mtlbench data`, kept in every record, warned about, and a run
whose tokens are mostly unknown is refused (`--max-unknown`)."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from mtlbench.tasks.errors import UserError

SAMPLE_ROWS = 2000  # rows measured per split: the shares to within about 1 % (a fixed draw: reproducible)
WARN_UNKNOWN = 0.02  # above this share of unknown tokens a run warns
DEFAULT_MAX_UNKNOWN = 0.25  # above this it is refused unless --max-unknown says otherwise
WARN_TRUNCATED = 0.05
WARN_OVERLAP = 0.02  # of a split's rows found verbatim in train (the synthetic quora: 0.9 %, by chance)


@dataclass(frozen=True)
class SplitQuality:
    rows_measured: int
    unknown_share: float | None  # of the tokens made of the text (special tokens aside); None: no unknown token
    truncated_share: float  # of the rows, with more tokens than max_length
    in_train: int | None = None  # rows whose text is also a train row's (None for train itself)
    in_train_share: float | None = None


def row_key(row: dict) -> tuple:
    """What makes two rows the same example: their text (labels aside)."""
    if "tokens" in row:
        return tuple(row["tokens"])
    if "text_a" in row:
        return row["text_a"], row["text_b"]
    return (row.get("text"),)


def _sample(rows: list[dict]) -> list[dict]:
    if len(rows) <= SAMPLE_ROWS:
        return rows
    return random.Random(0).sample(rows, SAMPLE_ROWS)


def _encodings(rows: list[dict], tokenizer, cross: bool) -> list[list[list[int]]]:
    """Per row, the untruncated token ids of each sequence the encoder gets (one, or two for a pair
    encoded separately)."""
    if "tokens" in rows[0]:
        return [[ids] for ids in tokenizer([r["tokens"] for r in rows], is_split_into_words=True)["input_ids"]]
    if "text_a" in rows[0]:
        if cross:
            return [[ids] for ids in tokenizer([r["text_a"] for r in rows], [r["text_b"] for r in rows])["input_ids"]]
        a = tokenizer([r["text_a"] for r in rows])["input_ids"]
        b = tokenizer([r["text_b"] for r in rows])["input_ids"]
        return [[x, y] for x, y in zip(a, b, strict=True)]
    return [[ids] for ids in tokenizer([r["text"] for r in rows])["input_ids"]]


def measure_split(rows: list[dict], tokenizer, max_length: int, cross: bool = False) -> SplitQuality:
    """Unknown-token and truncation shares of (a fixed sample of) one split's rows."""
    rows = _sample(rows)
    if not rows:
        return SplitQuality(0, None, 0.0)
    special, unknown = set(tokenizer.all_special_ids), tokenizer.unk_token_id
    counted = unknowns = truncated = 0
    for sequences in _encodings(rows, tokenizer, cross):
        truncated += any(len(ids) > max_length for ids in sequences)
        for ids in sequences:
            text_ids = [i for i in ids if i not in special or i == unknown]
            counted += len(text_ids)
            unknowns += sum(i == unknown for i in text_ids)
    unknown_share = None if unknown is None else unknowns / max(counted, 1)
    return SplitQuality(len(rows), unknown_share, truncated / len(rows))


def measure_task(rows: dict[str, list[dict]], tokenizer, max_length: int, cross: bool = False) -> dict[str, dict]:
    """Per split: the shares above, and (for splits other than train) how many rows train holds too."""
    train = {row_key(r) for r in rows.get("train", [])}
    measured = {}
    for split, split_rows in rows.items():
        quality = measure_split(split_rows, tokenizer, max_length, cross)
        if split != "train" and split_rows:
            shared = sum(row_key(r) in train for r in split_rows)
            quality = SplitQuality(quality.rows_measured, quality.unknown_share, quality.truncated_share,
                                   shared, shared / len(split_rows))
        measured[split] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(quality).items()}
    return measured


def _shares(splits: dict[str, dict], key: str, above: float) -> str:
    """'train 37%, dev 38%': the splits where `key` is above `above`."""
    return ", ".join(f"{split} {q[key]:.0%}" for split, q in splits.items()
                     if q.get(key) is not None and q[key] > above)


def warnings(quality: dict[str, dict[str, dict]], max_length: int) -> list[str]:
    """One line per task and problem worth a user's attention."""
    lines = []
    for task, splits in quality.items():
        if unknown := _shares(splits, "unknown_share", WARN_UNKNOWN):
            lines.append(f"{task}: tokens unknown to the tokenizer: {unknown} (scores near chance follow; "
                         f"an encoder made for this text knows them: --model NAME)")
        if cut := _shares(splits, "truncated_share", WARN_TRUNCATED):
            lines.append(f"{task}: rows cut at max_length {max_length} tokens: {cut}")
        if shared := _shares(splits, "in_train_share", WARN_OVERLAP):
            lines.append(f"{task}: rows whose text is also in train: {shared} (their scores overstate what the "
                         f"model does on unseen text)")
    return lines


def refuse_unknown(quality: dict[str, dict[str, dict]], limit: float, model: str) -> None:
    """A UserError when a task's train tokens are mostly unknown: such a run cannot mean anything."""
    worst = {t: s["train"]["unknown_share"] for t, s in quality.items()
             if "train" in s and s["train"]["unknown_share"] is not None and s["train"]["unknown_share"] > limit}
    if worst:
        listed = ", ".join(f"{t} {share:.0%}" for t, share in worst.items())
        raise UserError(f"the tokenizer of model '{model}' does not know much of this text: unknown tokens in train: "
                        f"{listed} (over --max-unknown {limit:g}); use an encoder made for this text: --model NAME "
                        f"(a local folder or a cached hub name), or raise --max-unknown to run anyway")
