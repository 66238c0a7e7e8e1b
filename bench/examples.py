"""Per-example dev predictions, stored beside each record, and the paired bootstrap over them.

`RUN.examples.safetensors` holds, for the last epoch and for each task's best dev epoch, every dev
row's prediction and gold label as flat numeric arrays (token and MLM rows with their lengths):
a few kB per task, loaded without pickle.

The paired bootstrap (Koehn, 2004; Berg-Kirkpatrick et al., 2012) asks whether a recipe's dev metric
differs from the baseline recipe's by more than the choice of dev examples explains. A replicate
draws n dev rows with replacement, the same rows for both recipes and for every seed, and takes the
mean over seeds of (recipe's metric - baseline's metric) on them. The p-value is two-sided: twice
the smaller share of replicates on either side of zero. It sees example noise, not seed noise beyond
the seeds it pools: with one seed it says whether this seed's runs differ, not whether the recipes do.

Every metric is computed from per-row statistics (counts, sums), so that all replicates are one
matrix product: weights W (replicates x rows, how often each row was drawn) times the rows'
statistics. Spearman's rho ranks each replicate's rows instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mtlbench.tasks.spec import TaskKind, TaskSpec

SUFFIX = ".examples.safetensors"


def path_for(record_path: Path) -> Path:
    return record_path.with_name(record_path.name.removesuffix(".json") + SUFFIX)


def pack(dev_examples: dict) -> dict[str, np.ndarray]:
    """{selection: {task: (predictions, golds)}} -> flat arrays named 'selection/task/field'."""
    arrays = {}
    for selection, tasks in dev_examples.items():
        for task, (predictions, golds) in tasks.items():
            key = f"{selection}/{task}/"
            if predictions and isinstance(predictions[0], (list, tuple)):  # token or MLM rows
                arrays[key + "lengths"] = np.array([len(p) for p in predictions], dtype=np.int64)
                flat = [x for row in predictions for x in row]
                if flat and isinstance(flat[0], (list, tuple)):  # MLM: (predicted id, nll)
                    arrays[key + "predictions"] = np.array([x[0] for x in flat], dtype=np.int64)
                    arrays[key + "nll"] = np.array([x[1] for x in flat], dtype=np.float64)
                else:
                    arrays[key + "predictions"] = np.array(flat, dtype=np.int64)
                arrays[key + "golds"] = np.array([g for row in golds for g in row], dtype=np.int64)
            else:
                arrays[key + "predictions"] = np.asarray(predictions)
                arrays[key + "golds"] = np.asarray(golds)
    return arrays


def write(path: Path, dev_examples: dict) -> None:
    """Atomically, like the records (bench.files.atomic)."""
    from mtlbench.bench.files import atomic
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(v) for k, v in pack(dev_examples).items()}
    with atomic(path) as temporary:
        save_file(arrays, str(temporary))


@dataclass
class Examples:
    """One run's dev rows of one task: flat arrays, and each row's length for token-level kinds."""

    predictions: np.ndarray
    golds: np.ndarray
    lengths: np.ndarray | None = None
    nll: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return len(self.lengths) if self.lengths is not None else len(self.golds)


def load(path: Path, selection: str) -> dict[str, Examples]:
    from safetensors.numpy import load_file

    arrays = load_file(str(path))
    tasks: dict[str, dict] = {}
    for key, value in arrays.items():
        chosen, task, name = key.split("/")
        if chosen == selection:
            tasks.setdefault(task, {})[name] = value
    return {task: Examples(**fields) for task, fields in tasks.items()}


def _row_statistics(spec: TaskSpec, metric: str, examples: Examples):
    """(rows x k statistics, function from summed statistics (replicates x k) to the metric)."""
    kind = spec.kind
    p, g = examples.predictions, examples.golds
    if kind.is_token_level:
        owner = np.repeat(np.arange(examples.rows), examples.lengths)

        def per_row(values):  # flat per-position values summed per row
            return np.bincount(owner, weights=values, minlength=examples.rows)
        counts = examples.lengths.astype(float)
        if metric == "perplexity":
            return np.stack([per_row(examples.nll), counts], 1), lambda s: np.exp(s[:, 0] / s[:, 1])
        if metric == "accuracy":
            return np.stack([per_row((p == g).astype(float)), counts], 1), lambda s: s[:, 0] / s[:, 1]
        if kind is TaskKind.TOKEN_BINARY:
            tp, fp, fn = per_row((p == 1) & (g == 1)), per_row((p == 1) & (g != 1)), per_row((p != 1) & (g == 1))
            stats = np.stack([tp, fp, fn], 1)
        else:  # IOB: entities per row, seqeval's rules
            from seqeval.metrics.sequence_labeling import get_entities

            stats = np.zeros((examples.rows, 3))
            ends = np.cumsum(examples.lengths)
            for row, (end, length) in enumerate(zip(ends, examples.lengths)):
                true = set(get_entities([spec.labels[i] for i in g[end - length:end]]))
                found = set(get_entities([spec.labels[i] for i in p[end - length:end]]))
                stats[row] = (len(true & found), len(found - true), len(true - found))
        return stats, _f1_from_counts(metric)
    if metric == "accuracy":
        return np.stack([(p == g).astype(float), np.ones(len(g))], 1), lambda s: s[:, 0] / s[:, 1]
    if metric == "f1_macro":
        classes = np.unique(np.concatenate([p, g]))
        stats = np.concatenate([(p[:, None] == classes) & (g[:, None] == classes),
                                (p[:, None] == classes) & (g[:, None] != classes),
                                (p[:, None] != classes) & (g[:, None] == classes)], 1).astype(float)
        k = len(classes)

        def macro(s):
            tp, fp, fn = s[:, :k], s[:, k:2 * k], s[:, 2 * k:]
            present = (tp + fp + fn) > 0
            f1 = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), 0.0)
            return f1.sum(1) / present.sum(1)
        return stats, macro
    if metric == "pearson":
        x, y = p.astype(float), g.astype(float)
        return np.stack([x, y, x * x, y * y, x * y, np.ones_like(x)], 1), _pearson_from_sums
    raise ValueError(f"no bootstrap statistics for metric '{metric}' of kind {kind.value}")


def _f1_from_counts(metric: str):
    def f1(s):
        tp, fp, fn = s[:, 0], s[:, 1], s[:, 2]
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1e-300), 0.0)
        if metric == "precision":
            return precision
        if metric == "recall":
            return recall
        return np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return f1


def _pearson_from_sums(s):
    sx, sy, sxx, syy, sxy, n = s.T
    cov = sxy - sx * sy / n
    vx, vy = sxx - sx * sx / n, syy - sy * sy / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return cov / np.sqrt(vx * vy)


def resampled_metric(spec: TaskSpec, metric: str, examples: Examples, weights: np.ndarray) -> np.ndarray:
    """The metric on each replicate: `weights[b, i]` = how often row i was drawn in replicate b."""
    if metric == "spearman":
        from scipy.stats import rankdata

        rows = np.repeat(np.arange(examples.rows)[None, :], len(weights), 0)
        drawn = [np.repeat(r, w) for r, w in zip(rows, weights.astype(int))]
        x = rankdata(np.stack([examples.predictions.astype(float)[d] for d in drawn]), axis=1)
        y = rankdata(np.stack([examples.golds.astype(float)[d] for d in drawn]), axis=1)
        ones = np.ones_like(x)
        return _pearson_from_sums(np.stack([(v).sum(1) for v in (x, y, x * x, y * y, x * y, ones)], 1))
    stats, reduce = _row_statistics(spec, metric, examples)
    return reduce(weights @ stats)


def paired_bootstrap(spec: TaskSpec, metric: str, pairs: list[tuple[Examples, Examples]], replicates: int = 1000,
                     seed: int = 0) -> dict:
    """pairs: per seed, (recipe's examples, baseline's examples) on the same dev rows. Returns the
    observed mean difference (recipe - baseline), its 95 % bootstrap interval and the p-value."""
    rows = pairs[0][0].rows
    for mine, theirs in pairs:
        if mine.rows != rows or theirs.rows != rows or not np.array_equal(mine.golds, theirs.golds):
            raise ValueError(f"{spec.name}: the runs were scored on different dev rows; they cannot be paired")
    full = np.ones((1, rows))
    observed = float(np.mean([resampled_metric(spec, metric, a, full)[0] - resampled_metric(spec, metric, b, full)[0]
                              for a, b in pairs]))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(rows, np.full(rows, 1.0 / rows), size=replicates).astype(float)
    differences = np.mean([resampled_metric(spec, metric, a, weights) - resampled_metric(spec, metric, b, weights)
                           for a, b in pairs], axis=0)
    differences = differences[np.isfinite(differences)]
    if not len(differences):
        return {"difference": observed, "p_value": float("nan"), "interval": [float("nan")] * 2}
    p_value = min(1.0, 2 * min(np.mean(differences <= 0), np.mean(differences >= 0)))
    low, high = np.percentile(differences, [2.5, 97.5])
    return {"difference": observed, "p_value": float(p_value), "interval": [float(low), float(high)],
            "replicates": len(differences), "seeds": len(pairs)}
