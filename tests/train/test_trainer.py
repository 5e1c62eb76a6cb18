"""Trainer: exact resume, atomic checkpoint writes, early stopping with best-weight restore, optimizers,
regression, AMP, and DDP with 2 gloo processes on CPU."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from fastint.data.synthetic import make_synthetic
from fastint.train.trainer import TrainConfig, Trainer, _save_atomically, resolve_device
from fastint.models import build_model

# small models; dropout where the model has it, so the resume test also covers the RNG state
PARAMS = {"autoint": dict(embed_dim=8, num_layers=1, num_heads=2, head_dim=4, dnn_hidden_units=(8,),
                          dnn_dropout=0.2),
          "afm": dict(embed_dim=8, attention_dim=8, dropout=0.2)}


def small_config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=256, eval_batch_size=1024, lr=3e-3, patience=0, prefetch=0,
                progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def data():
    return make_synthetic(3000, seed=1)  # 2400 train rows: 10 batches of 256 per epoch


@pytest.mark.parametrize("prefetch", [0, 2])
def test_resume_equals_uninterrupted(data, tmp_path, prefetch):
    torch.manual_seed(0)
    model = build_model("autoint", data.schema, **PARAMS["autoint"])
    full = Trainer(model, data, small_config(prefetch=prefetch), out_dir=str(tmp_path / "a"),
                   log=lambda s: None).fit()

    torch.manual_seed(0)
    first = Trainer(build_model("autoint", data.schema, **PARAMS["autoint"]), data,
                    small_config(stop_after_steps=13, prefetch=prefetch), out_dir=str(tmp_path / "b"),
                    log=lambda s: None)
    assert first.fit() == {"interrupted": True, "global_step": 13}  # mid epoch 2
    torch.manual_seed(123)  # a different init and RNG state: everything must come from the checkpoint
    resumed_model = build_model("autoint", data.schema, **PARAMS["autoint"])
    resumed = Trainer(resumed_model, data, small_config(prefetch=prefetch), out_dir=str(tmp_path / "b"),
                      log=lambda s: None)
    result = resumed.fit(resume=str(tmp_path / "b" / "checkpoints" / "last.pt"))
    assert result["global_step"] == full["global_step"] == 20
    for (name, a), b in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert result["test"] == full["test"] and result["history"] == full["history"]


def test_checkpoint_writes_are_atomic(tmp_path):
    """While a checkpoint is being written, ``last.pt`` still holds the previous complete one (what
    a process killed mid-write leaves behind); a failed write leaves no temporary file."""
    path = str(tmp_path / "last.pt")
    _save_atomically({"step": 1}, path)
    during = []

    class Interrupted:
        def __reduce__(self):  # pickled in the middle of the write
            during.append((torch.load(path, weights_only=False), os.path.exists(path + ".tmp")))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _save_atomically({"step": 2, "weights": torch.zeros(1000), "crash": Interrupted()}, path)
    assert during == [({"step": 1}, True)]
    assert torch.load(path, weights_only=False) == {"step": 1} and os.listdir(tmp_path) == ["last.pt"]


def test_early_stopping_restores_best_weights(data, tmp_path):
    model = build_model("autoint", data.schema, **PARAMS["autoint"])
    trainer = Trainer(model, data, small_config(epochs=8, patience=2), out_dir=str(tmp_path), log=lambda s: None)
    scripted = [0.60, 0.70, 0.65, 0.64, 0.99]  # valid AUC per epoch: best at 2, then 2 bad epochs
    real_evaluate = trainer.evaluate
    trainer.evaluate = lambda split: ({"auc": scripted.pop(0), "logloss": 0.5}
                                      if split == "valid" and len(scripted) > 1 else real_evaluate(split))
    result = trainer.fit()
    assert result["early_stopped"] and result["best_epoch"] == 2 and len(result["history"]) == 4
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert best["global_step"] == 20 and last["global_step"] == 40
    for name, value in model.state_dict().items():
        assert torch.equal(value, best["model"][name])
    assert any(not torch.equal(best["model"][n], last["model"][n]) for n in best["model"])


def test_training_learns_and_reports():
    data = make_synthetic(20000, seed=2)
    model = build_model("afm", data.schema, **PARAMS["afm"])
    result = Trainer(model, data, small_config(epochs=2, batch_size=512, grad_clip=1.0), log=lambda s: None).fit()
    assert set(result["valid"]) == {"auc", "logloss"}
    assert result["test"]["auc"] > 0.65 and result["throughput"] > 0


def test_sparse_adam(data):
    model = build_model("autoint", data.schema, **PARAMS["autoint"], sparse=True)
    trainer = Trainer(model, data, small_config(epochs=1, optimizer="sparse_adam"), log=lambda s: None)
    assert [type(o).__name__ for o in trainer.optimizers] == ["Adam", "SparseAdam"]
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="sparse=True"):
        Trainer(build_model("autoint", data.schema, **PARAMS["autoint"]), data,
                small_config(optimizer="sparse_adam"))


def test_regression_reports_rmse_and_bf16_autocast_runs(data):
    model = build_model("afm", data.schema, **PARAMS["afm"], task="regression")
    result = Trainer(model, data, small_config(epochs=1, amp="bf16"), log=lambda s: None).fit()
    assert set(result["test"]) == {"rmse"} and np.isfinite(result["test"]["rmse"])
    assert result["test"]["rmse"] < 0.6  # labels are 0/1: predicting the mean gives ~0.47


def test_config_validation():
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 1})
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=0)
    with pytest.raises(ValueError, match="training option epochs must be int, got '3'"):
        TrainConfig.from_dict({"epochs": "3"})
    with pytest.raises(ValueError, match="training option progress must be bool, got 1"):
        TrainConfig(progress=1)
    assert TrainConfig(lr=1).lr == 1  # an int is a valid float
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def _ddp_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    data = make_synthetic(2000, seed=0)
    torch.manual_seed(rank)  # different local inits: DDP must broadcast rank 0's weights
    model = build_model("autoint", data.schema, **PARAMS["autoint"])
    trainer = Trainer(model, data, small_config(epochs=1, batch_size=64, stop_after_steps=6), log=lambda s: None)
    assert trainer.world_size == 2 and trainer.loader.num_rows == 800
    trainer.fit()
    torch.save({"params": model.state_dict(), "rows": trainer.loader.epoch_order(0)[:64].tolist()},
               os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_two_gloo_ranks_end_identical(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert not set(r0["rows"]) & set(r1["rows"]), "ranks read different shards"
    for name, value in r0["params"].items():
        assert torch.equal(value, r1["params"][name]), f"{name} differs between ranks"
