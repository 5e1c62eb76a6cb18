"""Heatmaps and JSON for each model family's explanation layout (AutoInt, AFM, InterHAt), driven by
fake models that return known attention, so the averaging and the AFM pair matrix are checked
exactly."""
import json

import numpy as np
import pytest
import torch

from fastint.data.synthetic import make_synthetic
from fastint.data.loader import BatchLoader
from fastint.train.explain import explain_to_files, pair_matrix


class FakeModel(torch.nn.Module):
    """explain() returns attention that depends on the label, so the mean over samples is known."""

    def __init__(self, schema, kind):
        super().__init__()
        self.schema, self.kind = schema, kind

    def explain(self, batch):
        b, m = batch.batch_size, self.schema.num_fields
        y = batch.label.view(b, 1, 1, 1)
        if self.kind == "autoint":
            return {"attention/layer0": y * torch.ones(b, 2, m, m) / m, "attention/layer1": torch.full((b, 2, m, m), 1 / m)}
        if self.kind == "afm":
            pairs = torch.triu_indices(m, m, 1).T
            return {"pair_attention": torch.full((b, len(pairs)), 1 / len(pairs)), "pairs": pairs}
        return {"field_attention": torch.full((b, 3, m), 1 / m), "order_attention": torch.full((b, 3), 1 / 3)}


@pytest.fixture(scope="module")
def data():
    return make_synthetic(2000, seed=0)


@pytest.mark.parametrize("kind, pngs, key", [
    ("autoint", ["autoint_layer0.png", "autoint_layer1.png"], "attention/layer1"),
    ("afm", ["afm_pairs.png"], "pair_attention"),
    ("interhat", ["interhat_orders.png"], "field_attention"),
])
def test_explain_writes_png_and_json(data, tmp_path, kind, pngs, key):
    loader = BatchLoader(data, "test", 64, shuffle=False)
    written = explain_to_files(FakeModel(data.schema, kind), loader, str(tmp_path), max_samples=150)
    assert sorted(p.split("/")[-1] for p in written) == sorted(pngs + ["attention.json"])
    for png in pngs:
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    att = json.load(open(tmp_path / "attention.json"))
    assert att["fields"][:2] == ["c0", "c1"] and att["samples"] == 150 and key in att
    if kind == "autoint":  # layer0 mean = (positive rate of the first 150 test rows) / M
        rate = np.asarray(data.columns["label"])[data.split("test")[:150]].mean()
        np.testing.assert_allclose(att["attention/layer0"][0][0][0], rate / 14, rtol=1e-5)


def test_pair_matrix_is_symmetric_with_empty_diagonal():
    mat = pair_matrix(np.array([0.2, 0.3, 0.5]), np.array([[0, 1], [0, 2], [1, 2]]), 3)
    assert np.isnan(np.diag(mat)).all()
    np.testing.assert_array_equal(mat[[0, 1, 0, 2, 1, 2], [1, 0, 2, 0, 2, 1]], [0.2, 0.2, 0.3, 0.3, 0.5, 0.5])
