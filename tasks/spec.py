"""What a task is: its kind (the shape of its examples, its head, its metrics), its labels and where
its data comes from. Tasks are declared in TOML (see `tasks.registry`); this module holds the
resolved form and the table of kinds."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum

SPLITS = ("train", "dev", "test")


class TaskKind(str, Enum):
    SINGLE_CLASSIFICATION = "single_classification"
    PAIR_CLASSIFICATION = "pair_classification"
    PAIR_REGRESSION = "pair_regression"
    TOKEN_IOB = "token_iob"  # IOB entity tagging, scored per entity (seqeval)
    TOKEN_BINARY = "token_binary"  # per-token yes/no ("is this token part of an entity")
    MLM = "mlm"  # masked-language-model auxiliary task on the task's text

    @property
    def info(self) -> KindInfo:
        return KINDS[self]

    @property
    def is_pair(self) -> bool:
        return self.info.fields[:2] == ("text_a", "text_b")

    @property
    def is_token_level(self) -> bool:
        return self.info.token_level


@dataclass(frozen=True)
class KindInfo:
    """One row of the kinds table: what rows look like, how labels are given, how it is scored."""

    fields: tuple[str, ...]  # the row fields a source must provide
    labels: str  # "classes" (a label set), "tags" (a label set per token), "range" (numbers), "none"
    metrics: tuple[str, ...]  # the first is the default primary metric
    token_level: bool = False
    description: str = ""


KINDS: dict[TaskKind, KindInfo] = {
    TaskKind.SINGLE_CLASSIFICATION: KindInfo(("text", "label"), "classes", ("accuracy", "f1_macro"),
                                             description="one text -> one class"),
    TaskKind.PAIR_CLASSIFICATION: KindInfo(("text_a", "text_b", "label"), "classes", ("accuracy", "f1_macro"),
                                           description="two texts -> one class"),
    TaskKind.PAIR_REGRESSION: KindInfo(("text_a", "text_b", "label"), "range", ("pearson", "spearman"),
                                       description="two texts -> a score in a range"),
    TaskKind.TOKEN_IOB: KindInfo(("tokens", "tags"), "tags", ("f1", "precision", "recall", "accuracy"), True,
                                 "words -> IOB tags; entity-level P/R/F1 by seqeval"),
    TaskKind.TOKEN_BINARY: KindInfo(("tokens", "tags"), "tags", ("f1", "accuracy", "precision", "recall"), True,
                                    "words -> 0/1 tag each; F1 of the positive tag, token accuracy"),
    TaskKind.MLM: KindInfo(("text",), "none", ("accuracy", "perplexity"), True,
                           "masked-language modelling on the text: 15 % of tokens, 80/10/10"),
}


@dataclass(frozen=True)
class TaskSpec:
    """A resolved task definition.

    `labels` are label names (strings) in index order: declared in the definition, read from a
    label->index JSON file, or inferred from the training split (then filled in when the data is
    loaded, `label_origin` saying which)."""

    name: str
    kind: TaskKind
    primary_metric: str
    description: str = ""
    labels: tuple[str, ...] | None = None
    label_origin: str = "declared"
    label_range: tuple[float, float] | None = None  # regression targets
    sources: dict[str, dict] = field(default_factory=dict, compare=False)  # source name -> its table
    limits: dict[str, int] = field(default_factory=dict)  # split -> at most this many rows
    origin: str = ""  # the file (and table) it was declared in

    @property
    def num_labels(self) -> int:
        """Outputs of the head: one logit for two classes and for regression, else one per label."""
        if self.kind.info.labels == "range" or self.kind is TaskKind.MLM:
            return 1
        count = len(self.labels or ())
        return 1 if count == 2 and self.kind.info.labels == "classes" else count

    @property
    def metric_names(self) -> tuple[str, ...]:
        return self.kind.info.metrics

    def with_labels(self, labels: tuple[str, ...], origin: str) -> TaskSpec:
        return replace(self, labels=tuple(labels), label_origin=origin)

    def resolved(self) -> dict:
        """The definition as the record keeps it."""
        return {"name": self.name, "kind": self.kind.value, "primary_metric": self.primary_metric,
                "labels": list(self.labels) if self.labels is not None else None, "label_origin": self.label_origin,
                "label_range": list(self.label_range) if self.label_range else None, "limits": self.limits,
                "sources": self.sources, "origin": self.origin}


@dataclass
class TaskData:
    """Rows of one task from one source, per split, plus what was skipped and why.

    Rows hold label indices (classification), floats (regression), tag indices (token tasks) or
    text only (MLM, unlabelled test splits)."""

    rows: dict[str, list[dict]]
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> reason -> count
    labels: tuple[str, ...] | None = None  # label names in index order, when the source fixed them
    label_origin: str | None = None
    source: str = ""  # which of the task's sources the rows came from
