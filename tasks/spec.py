"""Task definitions: what a task's examples look like and how it is scored."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from tasks import metrics


class TaskKind(str, Enum):
    SINGLE_CLASSIFICATION = "single_classification"
    PAIR_CLASSIFICATION = "pair_classification"
    PAIR_REGRESSION = "pair_regression"
    # Token tagging (IOB NER) and MLM are planned kinds; the model's head table is keyed by kind.

    @property
    def is_pair(self) -> bool:
        return self in (TaskKind.PAIR_CLASSIFICATION, TaskKind.PAIR_REGRESSION)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: TaskKind
    num_labels: int  # classes; 1 for binary (one logit) and for regression
    primary_metric: str
    description: str = ""
    label_range: tuple[float, float] | None = None  # regression targets

    @property
    def metric_names(self) -> tuple[str, ...]:
        return metrics.METRICS_BY_KIND[self.kind.value]

    def score(self, predictions, labels) -> dict[str, float]:
        return metrics.compute(self.kind.value, predictions, labels)


@dataclass
class TaskData:
    """Rows of one task from one source, per split, plus what was skipped and why."""

    rows: dict[str, list[dict]]
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> reason -> count


SST = TaskSpec(
    "sst", TaskKind.SINGLE_CLASSIFICATION, 5, "accuracy",
    "SST-style sentiment, 5 classes (0 very negative .. 4 very positive)",
)
QUORA = TaskSpec(
    "quora", TaskKind.PAIR_CLASSIFICATION, 1, "accuracy",
    "Quora-style paraphrase detection, binary",
)
STS = TaskSpec(
    "sts", TaskKind.PAIR_REGRESSION, 1, "pearson",
    "STS-style semantic similarity, regression on 0-5", label_range=(0.0, 5.0),
)

TASKS: dict[str, TaskSpec] = {t.name: t for t in (SST, QUORA, STS)}
SPLITS = ("train", "dev", "test")
