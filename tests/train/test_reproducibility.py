"""Reproducibility through the CLI: the same command and seed give bit-identical weights and metrics
(a prefetch thread does not change the batches), and a run killed with SIGKILL between checkpoints,
continued with ``--resume``, ends with the weights of the uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import fastint.train.cli as cli

# A small AutoInt+ with dropout, so that training draws random numbers too; 2400 training rows of
# 3000 are 38 steps of 64 per epoch. One thread: the thread count changes float rounding.
MODEL = ["--param", "embed_dim=8", "--param", "num_layers=1", "--param", "dnn_hidden_units=[8]",
         "--param", "dnn_dropout=0.2"]


def train_argv(rows: int = 3000, epochs: int = 1, *extra: str) -> list[str]:
    return ["train", "--rows", str(rows), "--epochs", str(epochs), "--batch-size", "64", "--no-progress",
            "--device", "cpu", "--threads", "1", *MODEL, *extra]


def tensors(obj, path: str = "") -> dict[str, torch.Tensor]:
    """``{path: tensor}`` of every tensor in a checkpoint (nested dicts, lists and tuples): model
    weights, optimizer moments and step counts, torch RNG state."""
    if isinstance(obj, torch.Tensor):
        return {path: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors(value, f"{path}/{key}").items()}


def assert_same_checkpoints(run_a: str, run_b: str) -> None:
    """Every tensor of ``last.pt`` and ``best.pt`` equal (``torch.equal``), and the same step, loader
    position, numpy/python RNG states and validation history."""
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(os.path.join(run, "checkpoints", name), weights_only=False) for run in (run_a, run_b))
        ta, tb = tensors(a), tensors(b)
        assert ta.keys() == tb.keys() and "/model/embedding.weight" in ta
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{name}: {key} differs"
        assert a["global_step"] == b["global_step"]
        if name == "last.pt":
            assert a["loader"] == b["loader"] and a["state"]["history"] == b["state"]["history"]
            (kind_a, keys_a, *rest_a), (kind_b, keys_b, *rest_b) = a["rng"]["numpy"], b["rng"]["numpy"]
            assert (kind_a, rest_a) == (kind_b, rest_b) and np.array_equal(keys_a, keys_b)
            assert a["rng"]["python"] == b["rng"]["python"]


@pytest.fixture
def no_heatmaps(monkeypatch):
    """Skip the attention heatmaps ``fastint train`` draws after training (tested in test_cli): a
    second of matplotlib per run, and nothing of what these tests compare."""
    monkeypatch.setattr("fastint.train.explain.explain_to_files", lambda *args, **kwargs: [])


def metrics(run: str) -> dict:
    """What a run reports, without its timing."""
    with open(os.path.join(run, "metrics.json")) as f:
        summary = json.load(f)
    return {k: summary[k] for k in ("valid", "test", "history", "global_step", "best_epoch")}


def test_same_command_and_seed_give_identical_runs(tmp_path, no_heatmaps):
    """Twice the same command (prefetch thread on, the default), once without prefetching: the same
    weights, optimizer and RNG states, bit for bit, and the same metrics; another seed differs."""
    runs = {"a": [], "b": [], "no-prefetch": ["--prefetch", "0"], "seed-1": ["--seed", "1"]}
    for name, extra in runs.items():
        assert cli.main([*train_argv(3000, 1, *extra), "--out", str(tmp_path / name)]) == 0
    for name in ("b", "no-prefetch"):
        assert_same_checkpoints(str(tmp_path / "a"), str(tmp_path / name))
        assert metrics(str(tmp_path / name)) == metrics(str(tmp_path / "a"))
    a, other = (torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=False)["model"]
                for run in ("a", "seed-1"))
    assert all(not torch.equal(a[k], other[k]) for k in a)


def start_and_kill(argv: list[str], out: str, timeout: float = 120.0) -> bool:
    """Run ``fastint <argv> --out <out>`` in a subprocess and SIGKILL it as soon as it has written
    ``checkpoints/last.pt``. False when it finished first (it ran too fast to be killed)."""
    last = os.path.join(out, "checkpoints", "last.pt")
    with open(out + ".stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fastint.train.cli", *argv, "--out", out],
                                stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while not os.path.exists(last) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if proc.poll() is None:  # not reaped: the pid is still this child's, even if it exits now
            os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait()
        err.seek(0)
        assert code in (0, -signal.SIGKILL) and time.monotonic() < deadline, err.read()
    return code == -signal.SIGKILL


def test_resume_after_sigkill_equals_uninterrupted(tmp_path, no_heatmaps):
    """Killed right after its first checkpoint (step 5, mid epoch 1 of 2) while it keeps training;
    ``--resume`` with the same command ends where the uninterrupted run ends: every tensor equal."""
    every = 5
    for rows in (3000, 12000, 48000):  # a run that finished before the kill is retried, slower
        argv = train_argv(rows, 2, "--checkpoint-every", str(every))
        killed = str(tmp_path / f"killed-{rows}")
        if start_and_kill(argv, killed):
            break
    else:
        pytest.fail("every run finished before it could be killed")
    last = os.path.join(killed, "checkpoints", "last.pt")
    steps_at_kill = torch.load(last, weights_only=False)["global_step"]

    full = str(tmp_path / "uninterrupted")
    assert cli.main([*argv, "--out", full]) == 0
    total_steps = metrics(full)["global_step"]
    assert every <= steps_at_kill < total_steps  # killed between checkpoints, before the end

    assert cli.main([*argv, "--out", killed, "--resume", last]) == 0
    assert_same_checkpoints(full, killed)
    assert metrics(killed) == metrics(full)
