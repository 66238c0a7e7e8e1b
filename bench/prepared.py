"""What every run of a suite shares, made once: the data of each task, the task definitions with
their label sets resolved (the one resolved list the runs use), the encoder's path and tokenizer,
and the tokenized splits (cached on disk by bench.data)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from mtlbench.bench import backbone, data_quality, holdout
from mtlbench.bench.config import Suite
from mtlbench.bench.data import encoding_for, tokenize
from mtlbench.bench.files import check_writable_folder
from mtlbench.tasks.errors import UserError
from mtlbench.tasks.sources import load_task
from mtlbench.tasks.spec import TaskData, TaskSpec


@dataclass
class Prepared:
    """What every run of a suite shares: the data, the resolved task definitions, the encoder's
    path and tokenizer, and the tokenized splits."""

    data: dict[str, TaskData]
    specs: dict[str, TaskSpec]  # resolved: label sets read from a label map or inferred from train
    splits: tuple[str, ...]
    model_path: str
    tokenizer: object
    pad_id: int
    max_length: int  # the suite's max_length, capped at the encoder's positions
    tokens: dict
    unlabelled_test: frozenset
    seconds: float
    # With a carved validation split (suite.validation = "carved"): per task, the indices of the
    # original train rows that train and that score ({"train": [...], "dev": [...]}; bench.holdout).
    carved_from_train: dict[str, dict[str, list[int]]] | None = None
    # Per task and split: unknown-token and truncation shares, rows also in train (bench.data_quality).
    quality: dict[str, dict[str, dict]] | None = None


def prepare(suite: Suite, log=print) -> Prepared:
    backbone.quiet_transformers()
    started = time.perf_counter()
    check_writable_folder(backbone.cache_root(), "MTLBENCH_CACHE")  # the encoder and the tokens are kept there
    data = {t: load_task(suite.data, suite.specs[t], suite.data_dir, suite.synthetic) for t in suite.tasks}
    # The definitions with their label sets resolved (read from a label map or inferred from train).
    specs = {t: suite.specs[t].with_labels(d.labels, d.label_origin) if d.labels else suite.specs[t]
             for t, d in data.items()}
    carved_from_train = None
    if suite.validation == "carved":  # bench.tuning's trials: dev is held out of train
        carved_from_train = {}
        for task in list(data):
            try:
                data[task], carved_from_train[task] = holdout.carved(data[task], specs[task], suite.tune.tune_fraction,
                                                                     suite.tune.seed)
            except ValueError as error:
                raise UserError(f"{suite.source} [tune]: {error}") from None
    splits = ("train", "dev", "test") if suite.test else ("train", "dev")
    for task, loaded in data.items():
        if suite.test and not loaded.rows.get("test"):
            raise UserError(f"{suite.source}: test = true, but task '{task}' has no test rows "
                            f"from source '{loaded.source}'")
        for split, reasons in loaded.skipped.items():
            if reasons:
                log(f"  {task}/{split}: skipped " + ", ".join(f"{n} ({r})" for r, n in reasons.items()))
    model_path = backbone.resolve(suite.model, suite.tiny_encoder, log)
    backbone.load_encoder(model_path)  # weights that cannot load fail here, before any run starts
    tokenizer = backbone.load_tokenizer(model_path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    limit = backbone.max_positions(model_path, tokenizer)
    max_length = min(suite.train.max_length, limit)  # recorded as model.max_length
    if suite.train.max_length > limit:
        log(f"  max_length {suite.train.max_length} is more than model '{suite.model}' takes: {limit} tokens used")
    measured = (suite.baseline,) if suite.baseline is not None and suite.cost.enabled else ()  # bench.cost
    modes = sorted({"cross" if r.pair_head == "cross" else "bi" for r in suite.recipes + measured})
    quality = _checked_quality(suite, data, tokenizer, max_length, "cross" in modes, log)
    tokens = {}
    cache = backbone.cache_root() / "tokens"
    for mode in modes:
        for task, loaded in data.items():
            for split in splits:
                encoding = encoding_for(specs[task], mode, split, max_length)
                tokens[mode, task, split] = tokenize(loaded.rows[split], tokenizer, encoding, cache)
    # Test rows without labels (the CS224N test files) are for predictions only.
    unlabelled = frozenset(t for t, d in data.items() if suite.test and d.rows["test"]
                           and specs[t].kind.info.labels != "none" and not {"label", "tags"} & set(d.rows["test"][0]))
    return Prepared(data, specs, splits, model_path, tokenizer, pad_id, max_length, tokens, unlabelled,
                    time.perf_counter() - started, carved_from_train, quality)


def _checked_quality(suite: Suite, data: dict[str, TaskData], tokenizer, max_length: int, cross: bool, log) -> dict:
    """What the encoder will see of each task, said when it is poor; refused when the tokenizer
    knows too little of the text for a run to mean anything."""
    quality = {t: data_quality.measure_task(d.rows, tokenizer, max_length, cross) for t, d in data.items()}
    for line in data_quality.warnings(quality, max_length):
        log(f"  warning: {line}")
    data_quality.refuse_unknown(quality, suite.max_unknown, suite.model)
    return quality
