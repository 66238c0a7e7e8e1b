"""Per-example predictions beside the records, and the paired bootstrap over them."""

import math

import numpy as np
import pytest
from mtlbench.bench import examples
from mtlbench.tasks.builtin import QUORA, SST, STS
from mtlbench.tasks.metrics import score
from mtlbench.tasks.spec import TaskKind, TaskSpec
from scipy import stats

IOB = TaskSpec("ner", TaskKind.TOKEN_IOB, "f1", labels=("O", "B-PER", "I-PER", "B-LOC", "I-LOC"))
BINARY = TaskSpec("entity", TaskKind.TOKEN_BINARY, "f1", labels=("0", "1"))
MLM = TaskSpec("mlm", TaskKind.MLM, "accuracy")


def _rows(spec, rng, n=80):
    """Random predictions and golds of the kind's row layout (as the trainer keeps them)."""
    if spec.kind is TaskKind.PAIR_REGRESSION:
        gold = rng.uniform(0, 5, n)
        return list(gold + rng.normal(0, 1.5, n)), list(gold)
    if not spec.kind.is_token_level:
        gold = rng.integers(0, spec.num_labels if spec.num_labels > 1 else 2, n)
        noisy = np.where(rng.random(n) < 0.7, gold, rng.integers(0, max(spec.num_labels, 2), n))
        return noisy.tolist(), gold.tolist()
    lengths = rng.integers(1, 9, n)
    if spec.kind is TaskKind.MLM:
        golds = [rng.integers(0, 30, k).tolist() for k in lengths]
        preds = [[(int(g) if rng.random() < 0.4 else int(rng.integers(0, 30)), float(rng.uniform(0.1, 4)))
                  for g in row] for row in golds]
        return preds, golds
    labels = len(spec.labels)
    golds = [rng.integers(0, labels, k).tolist() for k in lengths]
    preds = [[g if rng.random() < 0.6 else int(rng.integers(0, labels)) for g in row] for row in golds]
    return preds, golds


CASES = [(SST, "accuracy"), (SST, "f1_macro"), (QUORA, "accuracy"), (STS, "pearson"), (STS, "spearman"),
         (IOB, "f1"), (IOB, "precision"), (IOB, "recall"), (IOB, "accuracy"), (BINARY, "f1"), (BINARY, "accuracy"),
         (MLM, "accuracy"), (MLM, "perplexity")]


def _examples(spec, preds, golds) -> examples.Examples:
    arrays = examples.pack({"last": {spec.name: (preds, golds)}})
    return examples.Examples(**{k.split("/")[2]: v for k, v in arrays.items()})


@pytest.mark.parametrize(("spec", "metric"), CASES, ids=[f"{s.name}-{m}" for s, m in CASES])
def test_row_statistics_reproduce_the_task_scorer_on_the_sample_and_on_resamples(spec, metric):
    rng = np.random.default_rng(0)
    preds, golds = _rows(spec, rng)
    packed = _examples(spec, preds, golds)
    full = examples.resampled_metric(spec, metric, packed, np.ones((1, packed.rows)))[0]
    assert full == pytest.approx(score(spec, preds, golds)[metric], rel=1e-9, abs=1e-12)
    # Three replicates: the weights' metric equals the scorer on the rows drawn.
    draws = rng.integers(0, packed.rows, (3, packed.rows))
    weights = np.stack([np.bincount(d, minlength=packed.rows) for d in draws]).astype(float)
    fast = examples.resampled_metric(spec, metric, packed, weights)
    for value, drawn in zip(fast, draws):
        expected = score(spec, [preds[i] for i in drawn], [golds[i] for i in drawn])[metric]
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_write_and_load_round_trip_without_pickle(tmp_path):
    rng = np.random.default_rng(1)
    kept = {"last": {"sst": _rows(SST, rng), "mlm": _rows(MLM, rng)}, "best": {"sts": _rows(STS, rng)}}
    path = tmp_path / "run-seed0.examples.safetensors"
    examples.write(path, kept)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left
    last = examples.load(path, "last")
    assert set(last) == {"sst", "mlm"} and set(examples.load(path, "best")) == {"sts"}
    assert last["sst"].predictions.tolist() == kept["last"]["sst"][0]
    assert last["mlm"].lengths.tolist() == [len(r) for r in kept["last"]["mlm"][1]]
    assert last["mlm"].nll.tolist() == [n for row in kept["last"]["mlm"][0] for _, n in row]


def _paired(correct_a, correct_b):
    """Two classifiers' examples on the same golds, from per-row correctness."""
    golds = np.zeros(len(correct_a), dtype=int)
    return (examples.Examples(np.where(correct_a, 0, 1), golds), examples.Examples(np.where(correct_b, 0, 1), golds))


def test_identical_runs_differ_by_nothing():
    a, b = _paired(np.arange(200) % 3 == 0, np.arange(200) % 3 == 0)
    result = examples.paired_bootstrap(SST, "accuracy", [(a, b)], replicates=500)
    assert result["difference"] == 0 and result["p_value"] == 1.0


@pytest.mark.parametrize("scale", ["unit", "large"])
def test_p_value_matches_the_normal_approximation_of_a_paired_mean(scale):
    """For accuracy the paired difference is the mean of d_i in {-1, 0, 1}; with n large its bootstrap
    distribution is normal with sd(d)/sqrt(n), so p ~ 2 (1 - Phi(mean / se))."""
    n = 400 if scale == "unit" else 20000
    rng = np.random.default_rng(3)
    base = rng.random(n) < 0.7
    better = base.copy()
    flip = rng.choice(n, int(0.035 * n), replace=False)
    better[flip] = ~better[flip]  # about 3.5 % of the rows change: mostly wrong -> right
    better[flip[: len(flip) // 4]] = False
    d = better.astype(float) - base.astype(float)
    expected = 2 * (1 - stats.norm.cdf(abs(d.mean()) / (d.std(ddof=0) / math.sqrt(n))))
    a, b = _paired(better, base)
    result = examples.paired_bootstrap(SST, "accuracy", [(a, b)], replicates=4000, seed=1)
    assert result["difference"] == pytest.approx(d.mean())
    assert result["p_value"] == pytest.approx(expected, abs=0.03)
    low, high = result["interval"]
    se = d.std(ddof=0) / math.sqrt(n)
    assert low == pytest.approx(d.mean() - 1.96 * se, abs=0.3 * se)
    assert high == pytest.approx(d.mean() + 1.96 * se, abs=0.3 * se)


def test_seeds_are_pooled_over_the_same_resampled_rows():
    rng = np.random.default_rng(4)
    golds = rng.integers(0, 2, 300)
    pairs = []
    for _ in range(3):  # each seed: the recipe right on 80 %, the baseline on 60 %
        mine = np.where(rng.random(300) < 0.8, golds, 1 - golds)
        theirs = np.where(rng.random(300) < 0.6, golds, 1 - golds)
        pairs.append((examples.Examples(mine, golds), examples.Examples(theirs, golds)))
    result = examples.paired_bootstrap(SST, "accuracy", pairs, replicates=1000)
    observed = np.mean([np.mean(a.predictions == golds) - np.mean(b.predictions == golds) for a, b in pairs])
    assert result["difference"] == pytest.approx(observed) and result["seeds"] == 3
    assert result["p_value"] < 0.01


def test_runs_on_different_dev_rows_are_not_paired():
    a = examples.Examples(np.zeros(10, dtype=int), np.zeros(10, dtype=int))
    b = examples.Examples(np.zeros(10, dtype=int), np.ones(10, dtype=int))
    with pytest.raises(ValueError, match="different dev rows"):
        examples.paired_bootstrap(SST, "accuracy", [(a, b)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_pearson_from_sums_at_every_scale(dtype, scale):
    """Correlation from sums loses digits when values are far from zero; at the scales a regression
    head emits (and far beyond), it matches SciPy."""
    rng = np.random.default_rng(5)
    gold = rng.uniform(0, 5, 500)
    pred = ((gold + rng.normal(0, 1, 500)) * scale).astype(dtype)
    packed = examples.Examples(pred, gold)
    value = examples.resampled_metric(STS, "pearson", packed, np.ones((1, 500)))[0]
    assert value == pytest.approx(stats.pearsonr(pred.astype(float), gold).statistic, rel=1e-6)
