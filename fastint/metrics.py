"""Evaluation metrics in float64 numpy (no scikit-learn dependency), used by ``fastint.data`` (the
synthetic dataset's Bayes-optimal AUC) and ``fastint.train`` (evaluation, early stopping).

* ``auc``: exact ROC AUC by ranks (Mann-Whitney U), ties get their average rank, so a tied
  positive/negative pair counts 1/2: ``AUC = (sum of positive ranks - P (P + 1) / 2) / (P N)``.
* ``logloss``: mean binary cross-entropy computed from logits, ``mean(softplus(s) - y s)``
  (exact, no clipping needed); ``logloss_from_prob`` clips probabilities to ``[eps, 1 - eps]``.
* ``rmse``: ``sqrt(mean((pred - y)^2))``.
"""
from __future__ import annotations

import numpy as np


def _ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of ``scores``; tied values share their average rank."""
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` for binary ``labels`` (> 0.5 is positive); NaN if one class is absent."""
    labels = np.asarray(labels).reshape(-1) > 0.5
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in length")
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    rank_sum = _ranks(scores)[labels].sum()
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))


def logloss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of ``logits`` against 0/1 ``labels``."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    s = np.asarray(logits, dtype=np.float64).reshape(-1)
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def logloss_from_prob(labels: np.ndarray, prob: np.ndarray, eps: float = 1e-7) -> float:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(prob, dtype=np.float64).reshape(-1), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def rmse(labels: np.ndarray, predictions: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.asarray(predictions, dtype=np.float64).reshape(-1)
    return float(np.sqrt(np.mean((p - y) ** 2)))


def compute_metrics(task: str, labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """``{"auc", "logloss"}`` for ``task="binary"`` (scores are logits); ``{"rmse"}`` for regression."""
    if task == "regression":
        return {"rmse": rmse(labels, scores)}
    return {"auc": auc(labels, scores), "logloss": logloss(labels, scores)}


# metric name -> True if larger is better
HIGHER_IS_BETTER = {"auc": True, "logloss": False, "rmse": False}
