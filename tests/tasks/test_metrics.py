import math

import pytest
from mtlbench.tasks import metrics


def test_accuracy_and_macro_f1():
    out = metrics.classification([0, 1, 1, 2], [0, 1, 2, 2])
    assert out["accuracy"] == pytest.approx(0.75)
    # per-class F1: class0 1.0, class1 2/3, class2 2/3
    assert out["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_pearson_and_spearman():
    out = metrics.regression([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert out == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    out = metrics.regression([1.0, 2.0, 3.0, 10.0], [4.0, 3.0, 2.0, 1.0])
    assert out["spearman"] == pytest.approx(-1.0)
    assert -1.0 < out["pearson"] < -0.7


def test_correlation_of_a_constant_prediction_is_undefined_not_zero():
    out = metrics.regression([2.5, 2.5, 2.5], [1.0, 2.0, 3.0])
    assert math.isnan(out["pearson"]) and math.isnan(out["spearman"])
