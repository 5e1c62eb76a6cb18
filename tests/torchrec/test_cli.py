"""``fastint train --embedding torchrec`` end to end in one process (sharded checkpoints that an
unsharded model loads back), and the errors of its flags (exit status 2, one line)."""
import json
import os

import numpy as np
import pytest
import torch

import fastint.train.cli as cli
from fastint.data.synthetic import make_synthetic
from fastint.metrics import compute_metrics
from fastint.models import build_model
from fastint.train.trainer import load_weights, predict
from tests.torchrec import requires_torchrec

TINY = ["--rows", "3000", "--epochs", "1", "--batch-size", "256", "--no-progress", "--device", "cpu",
        "--param", "embed_dim=8"]


@requires_torchrec
def test_train_on_torchrec_embeddings(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert cli.main(["train", *TINY, "--embedding", "torchrec", "--sharding", "column_wise",
                     "--embedding-optimizer", "rowwise_adagrad", "--lr", "0.01", "--out", run]) == 0
    assert "no attention heatmaps for a model on sharded torchrec embeddings" in capsys.readouterr().out
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["model_params"]["embedding"] == "torchrec"
    assert (config["train"]["sharding"], config["train"]["embedding_optimizer"]) == ("column_wise", "rowwise_adagrad")
    files = os.listdir(os.path.join(run, "checkpoints"))   # each checkpoint and its one shard directory
    assert sorted(f.split("-step")[0] for f in files) == ["best.pt", "best.pt", "last.pt", "last.pt"], files
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["test"]["auc"] > 0.6  # measured 0.630 (seeded run); no skill is 0.5

    # the best weights, tables from the sharded directory, into an unsharded model in this process
    path = os.path.join(run, "checkpoints", "best.pt")
    ckpt = torch.load(path, weights_only=False)
    data = make_synthetic(3000, seed=0)
    model = build_model(schema=data.schema, **ckpt["model_config"])
    load_weights(model, ckpt, path)
    labels, scores = predict(model, data, "test")
    assert np.isclose(compute_metrics("binary", labels, scores)["auc"], metrics["test"]["auc"], atol=1e-6)
    capsys.readouterr()
    assert cli.main(["evaluate", run, "--device", "cpu"]) == 0   # the run commands load it alike
    assert f"test: auc={metrics['test']['auc']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--embedding-optimizer", "sgd"], "--sharding and --embedding-optimizer need --embedding torchrec"),
    (["--sharding", "diagonal"], "argument --sharding: invalid choice: 'diagonal'"),
    (["--embedding", "torchrec", "--model", "aim"], "the aim search prunes embedding dimensions"),
])
def test_flag_errors(argv, message, capsys):
    assert cli.main(["train", *TINY, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastint: error: ") and message in err and err.count("\n") == 1, err


def test_torchrec_missing_is_a_usage_error(monkeypatch, capsys):
    """Without torchrec (simulated: its import fails), ``--embedding torchrec`` says what to install."""
    import sys
    for name in [n for n in sys.modules if n == "fastint.torchrec" or n.startswith("fastint.torchrec.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fbgemm_gpu", None)
    monkeypatch.setitem(sys.modules, "torchrec", None)
    assert cli.main(["train", *TINY, "--embedding", "torchrec"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastint: error: model autoint: embedding='torchrec' needs torchrec 1.8.0 with "
                          "fbgemm-gpu-cpu 1.8.0") and "Beyond one GPU" in err and err.count("\n") == 1, err
