"""Metrics per task kind, from per-example predictions and gold labels.

- classification: accuracy and macro-F1 (scikit-learn);
- regression: Pearson and Spearman (SciPy), NaN when a side is constant;
- IOB tagging: entity-level precision / recall / F1 with seqeval (the CoNLL scorer's rules, default
  mode), and token accuracy;
- binary tagging: token accuracy, and precision / recall / F1 of the positive tag;
- MLM: accuracy over the masked positions, and perplexity exp(mean negative log-likelihood).
"""

from __future__ import annotations

import math

import numpy as np

# scikit-learn, SciPy and seqeval are imported where they score: reading a task definition (which
# asks HIGHER_IS_BETTER) stays light.


def classification(predictions, labels) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    y_pred, y_true = np.asarray(predictions), np.asarray(labels)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
    }


def regression(predictions, labels) -> dict[str, float]:
    from scipy import stats

    y_pred, y_true = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if len(y_true) < 2 or np.ptp(y_pred) == 0 or np.ptp(y_true) == 0:
        # Correlation is undefined for constant input; report NaN rather than a fake 0.
        return {"pearson": math.nan, "spearman": math.nan}
    return {
        "pearson": float(stats.pearsonr(y_pred, y_true).statistic),
        "spearman": float(stats.spearmanr(y_pred, y_true).statistic),
    }


def _token_accuracy(predictions, labels) -> float:
    pairs = [(p, g) for ps, gs in zip(predictions, labels) for p, g in zip(ps, gs)]
    return sum(p == g for p, g in pairs) / len(pairs) if pairs else math.nan


def iob_tagging(predictions, labels, names) -> dict[str, float]:
    from seqeval.metrics import f1_score as entity_f1
    from seqeval.metrics import precision_score, recall_score

    y_pred = [[names[i] for i in sentence] for sentence in predictions]
    y_true = [[names[i] for i in sentence] for sentence in labels]
    return {
        "f1": float(entity_f1(y_true, y_pred, zero_division=0)),
        "precision": float(precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(recall_score(y_true, y_pred, zero_division=0)),
        "accuracy": _token_accuracy(predictions, labels),
    }


def binary_tagging(predictions, labels) -> dict[str, float]:
    from sklearn.metrics import precision_recall_fscore_support

    y_pred = [p for sentence in predictions for p in sentence]
    y_true = [g for sentence in labels for g in sentence]
    precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="binary", pos_label=1,
                                                               zero_division=0)
    return {"f1": float(f1), "accuracy": _token_accuracy(predictions, labels),
            "precision": float(precision), "recall": float(recall)}


def masked_lm(predictions, labels) -> dict[str, float]:
    """`predictions`: per example, (predicted id, negative log-likelihood) per masked position."""
    pairs = [(p, g) for ps, gs in zip(predictions, labels) for (p, _), g in zip(ps, gs)]
    nll = [n for ps in predictions for _, n in ps]
    if not pairs:
        return {"accuracy": math.nan, "perplexity": math.nan}
    return {"accuracy": sum(p == g for p, g in pairs) / len(pairs), "perplexity": math.exp(sum(nll) / len(nll))}


SCORERS = {  # kind -> scorer(predictions, labels, spec)
    "single_classification": lambda p, g, spec: classification(p, g),
    "pair_classification": lambda p, g, spec: classification(p, g),
    "pair_regression": lambda p, g, spec: regression(p, g),
    "token_iob": lambda p, g, spec: iob_tagging(p, g, spec.labels),
    "token_binary": lambda p, g, spec: binary_tagging(p, g),
    "mlm": lambda p, g, spec: masked_lm(p, g),
}


# Every metric a kind reports, and whether more is better: tables mark ▲/▼, Δm % takes its sign and
# the gate its direction from here. A task's primary metric must be higher-is-better (the overall
# column averages them).
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "f1_macro": True, "pearson": True, "spearman": True, "f1": True, "precision": True,
    "recall": True, "perplexity": False,
}


# What each metric can take: an interval over seeds is clipped to it (the mean lies inside, so the
# clipped interval keeps its coverage).
RANGES: dict[str, tuple[float, float]] = {
    "accuracy": (0.0, 1.0), "f1_macro": (0.0, 1.0), "f1": (0.0, 1.0), "precision": (0.0, 1.0), "recall": (0.0, 1.0),
    "pearson": (-1.0, 1.0), "spearman": (-1.0, 1.0), "perplexity": (1.0, math.inf),
}


def lower_is_better(metric: str) -> bool:
    return not HIGHER_IS_BETTER.get(metric, True)


def score(spec, predictions, labels) -> dict[str, float]:
    """The kind's metrics (`spec.kind.info.metrics`) for one split."""
    return SCORERS[spec.kind.value](predictions, labels, spec)
