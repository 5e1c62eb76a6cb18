"""The synthetic default dataset: deterministic, well-formed, and its Bayes AUC is what it claims."""
import numpy as np
import pytest

from fastint.data.synthetic import TAG_LEN, VOCABS, _tables, make_synthetic, synthetic_schema, true_logit
from fastint.metrics import auc


def test_deterministic_by_seed():
    a, b, c = make_synthetic(3000, seed=1), make_synthetic(3000, seed=1), make_synthetic(3000, seed=2)
    for name in a.columns:
        np.testing.assert_array_equal(a.columns[name], b.columns[name])
    for name in a.splits:
        np.testing.assert_array_equal(a.splits[name], b.splits[name])
    assert not np.array_equal(a.columns["categorical"], c.columns["categorical"])


def test_columns_match_schema():
    d = make_synthetic(4000, seed=0)
    schema = synthetic_schema()
    assert d.schema == schema
    cat, num, multi = d.columns["categorical"], d.columns["numeric"], d.columns["multi"]
    assert cat.shape == (4000, len(VOCABS)) and (cat >= 0).all() and (cat < np.array(VOCABS)).all()
    assert num.shape == (4000, 3) and num.dtype == np.float32 and np.isfinite(num).all()
    assert multi.shape == (4000, 1, TAG_LEN)
    tags = multi[:, 0]
    present = tags >= 0
    assert present[:, 0].all(), "every row has at least one tag"
    assert (np.diff(present.astype(int), axis=1) <= 0).all(), "padding only at the end"
    for row in tags[:200]:
        ids = row[row >= 0]
        assert len(set(ids)) == len(ids)
    assert set(np.unique(d.columns["label"])) == {0.0, 1.0}


def test_probabilities_follow_the_planted_logit_and_bayes_auc_is_exact():
    d = make_synthetic(5000, seed=3)
    rng = np.random.default_rng(3)
    logit = true_logit(_tables(rng), d.columns["categorical"], d.columns["numeric"], d.columns["multi"][:, 0])
    np.testing.assert_allclose(d.columns["prob"], 1 / (1 + np.exp(-logit)))
    test = d.split("test")
    assert d.info["bayes_auc"]["test"] == auc(d.columns["label"][test], d.columns["prob"][test])
    # The planted signal is strong but not trivial.
    assert 0.82 < d.info["bayes_auc"]["test"] < 0.92
    assert 0.2 < d.info["positive_rate"] < 0.45


@pytest.mark.parametrize("rows", ["3000", 9, 3000.0])
def test_rows_must_be_an_integer_of_at_least_ten(rows):
    with pytest.raises(ValueError, match=f"needs an integer number of rows >= 10, got {rows!r}"):
        make_synthetic(rows)


def test_rows_may_be_a_numpy_integer():
    assert len(make_synthetic(np.int64(10))) == 10
