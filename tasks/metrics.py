"""Metrics per task kind. Predictions are class ids (classification) or scores (regression)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score

METRICS_BY_KIND = {
    "single_classification": ("accuracy", "f1_macro"),
    "pair_classification": ("accuracy", "f1_macro"),
    "pair_regression": ("pearson", "spearman"),
}


def classification(predictions, labels) -> dict[str, float]:
    y_pred, y_true = np.asarray(predictions), np.asarray(labels)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def regression(predictions, labels) -> dict[str, float]:
    y_pred, y_true = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if len(y_true) < 2 or np.ptp(y_pred) == 0 or np.ptp(y_true) == 0:
        # Correlation is undefined for constant input; report NaN rather than a fake 0.
        return {"pearson": math.nan, "spearman": math.nan}
    return {
        "pearson": float(stats.pearsonr(y_pred, y_true).statistic),
        "spearman": float(stats.spearmanr(y_pred, y_true).statistic),
    }


def compute(kind: str, predictions, labels) -> dict[str, float]:
    return regression(predictions, labels) if kind == "pair_regression" else classification(predictions, labels)
