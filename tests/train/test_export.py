"""fastint.train.export: exported programs load back and score exactly like the model, for any
batch size, with the custom ops they were traced with."""
import pytest
import torch

from fastint import use_backend
from fastint.data import make_synthetic
from fastint.data.loader import BatchLoader
from fastint.models import build_model
from fastint.train.export import KINDS, export_model, load_program, save_program


@pytest.fixture(scope="module")
def data():
    return make_synthetic(rows=1500, seed=0)


def batch_of(data, split, size):
    return next(iter(BatchLoader(data, split, size, shuffle=False)))


def scores_of(fn, batch):
    return fn(*(getattr(batch, kind) for kind in KINDS))


def custom_ops(program):
    return {str(n.target).split(".")[1] for n in program.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("fastint.")}


@pytest.mark.parametrize("name", ["autoint", "afm", "interhat"])
def test_loaded_program_scores_like_the_model(name, data, tmp_path):
    model = build_model(name, data.schema)
    program = export_model(model, batch_of(data, "train", 16))
    assert "embedding_bag_forward" in custom_ops(program)
    path = str(tmp_path / "model.pt2")
    save_program(program, path)
    loaded = load_program(path)
    for size in (37, 1):                                   # the batch size is dynamic
        batch = batch_of(data, "test", size)
        expected = model.predict(batch)
        got = scores_of(loaded, batch)
        assert got.shape == (size,) and ((got > 0) & (got < 1)).all()
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_program_traced_on_the_kernel_backend_holds_the_fused_op(data, tmp_path):
    """With the fused kernels (interpreter here, CUDA in production) the program calls
    fastint::field_attention_forward and loads back with it."""
    model = build_model("autoint", data.schema, num_layers=1)
    with use_backend("kernel"):
        program = export_model(model, batch_of(data, "train", 8))
    assert "field_attention_forward" in custom_ops(program)
    path = str(tmp_path / "model.pt2")
    save_program(program, path)
    batch = batch_of(data, "test", 5)
    with use_backend("reference"):
        expected = model.predict(batch)
    torch.testing.assert_close(scores_of(load_program(path), batch), expected, rtol=1e-5, atol=1e-6)


def test_example_batch_of_one_row_is_refused(data):
    with pytest.raises(ValueError, match="at least 2 rows"):
        export_model(build_model("afm", data.schema), batch_of(data, "train", 1))


def test_cli_export_writes_a_checked_program(tmp_path, capsys, data):
    import fastint.train.cli as cli
    run = str(tmp_path / "run")
    assert cli.main(["train", "--model", "afm", "--rows", "2000", "--epochs", "1", "--batch-size", "256",
                     "--no-progress", "--device", "cpu", "--param", "embed_dim=8", "--out", run]) == 0
    capsys.readouterr()
    assert cli.main(["export", run]) == 0
    out = capsys.readouterr().out
    assert "model.pt2" in out and "max |difference|" in out
    loaded = load_program(str(tmp_path / "run" / "model.pt2"))
    batch = batch_of(data, "test", 11)
    scores = scores_of(loaded, batch)
    assert scores.shape == (11,) and ((scores > 0) & (scores < 1)).all()
    assert cli.main(["export", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err
