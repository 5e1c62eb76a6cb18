"""The default CPU thread count: the idle CPUs, shared by a host's torchrun processes."""
import pytest
import torch

from fastint.data import make_synthetic
from fastint.models import build_model
from fastint.train import threads
from fastint.train.trainer import TrainConfig, Trainer


@pytest.mark.parametrize("cpus, load, expected", [(2, 3.9, 1), (2, 0.1, 2), (2, 1.2, 1), (16, 4.2, 12),
                                                  (4, 0.0, 4), (4, 9.0, 1)])
def test_idle_cpus(cpus, load, expected):
    assert threads.idle_cpus(cpus, load) == expected


def test_torchrun_processes_share_the_idle_cpus(monkeypatch):
    monkeypatch.setattr(threads, "idle_cpus", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert threads.cpu_threads_per_process() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert threads.cpu_threads_per_process() == 1


@pytest.mark.parametrize("configured, idle, expected", [(0, 1, 1), (0, 2, 2), (3, 1, 3)])
def test_trainer_uses_the_idle_cpus_unless_told(configured, idle, expected, monkeypatch):
    monkeypatch.setattr(threads, "idle_cpus", lambda: idle)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    data = make_synthetic(rows=500, seed=0)
    lines = []
    Trainer(build_model("afm", data.schema, embed_dim=4), data,
            TrainConfig(threads=configured, device="cpu", progress=False), log=lines.append)
    assert torch.get_num_threads() == expected
    assert f"training on {expected} CPU thread(s)" in lines[0]
    assert ("--threads" if configured else "auto") in lines[0]
