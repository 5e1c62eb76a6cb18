"""Metrics against hand-computed values and a brute-force pairwise AUC."""
import math

import numpy as np
import pytest

from fastint.metrics import auc, compute_metrics, logloss, logloss_from_prob, rmse


def test_auc_hand_computed_with_ties():
    # positives 0.9, 0.3, 0.5 vs negatives 0.9, 0.1: pairs won 0.5 + 1 + 0 + 1 + 0 + 1 = 3.5 of 6
    assert auc(np.array([1, 0, 1, 0, 1]), np.array([0.9, 0.9, 0.3, 0.1, 0.5])) == pytest.approx(3.5 / 6)
    assert auc(np.array([0, 1]), np.array([0.0, 1.0])) == 1.0
    assert auc(np.array([0, 1]), np.array([1.0, 0.0])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.zeros(4)) == 0.5
    assert math.isnan(auc(np.ones(3), np.arange(3.0)))


def test_auc_equals_brute_force_pair_count():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 20, 300).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert auc(y, s) == pytest.approx(brute, abs=1e-12)
    with pytest.raises(ValueError, match="differ in length"):
        auc(y, s[:-1])


def test_logloss_rmse_hand_computed():
    # -ln(sigmoid(0)) = ln 2 ; -ln(1 - sigmoid(ln 3)) = -ln(1/4) = ln 4
    assert logloss(np.array([1, 0]), np.array([0.0, math.log(3)])) == pytest.approx(1.5 * math.log(2))
    assert logloss(np.array([0]), np.array([1000.0])) == pytest.approx(1000.0)  # no overflow
    assert logloss_from_prob(np.array([1, 0]), np.array([0.5, 0.75])) == pytest.approx(1.5 * math.log(2))
    assert rmse(np.array([1.0, -1.0]), np.array([0.0, 1.0])) == pytest.approx(math.sqrt(2.5))
    assert set(compute_metrics("binary", np.array([0, 1]), np.array([0.1, 0.2]))) == {"auc", "logloss"}
    assert set(compute_metrics("regression", np.array([0, 1]), np.array([0.1, 0.2]))) == {"rmse"}
