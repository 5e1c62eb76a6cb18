"""``Trainer``: fits a fastint model on a ``Dataset``'s ``train`` split, early-stops on ``valid``.

* Loss: BCE-with-logits (``model.task == "binary"``) or squared error (``"regression"``), plus
  ``model.regularization_loss()``.
* Optimizers: ``adam``, ``adamw``, ``sparse_adam`` — the sparse-friendly option: parameters of
  modules built with ``sparse=True`` (e.g. ``FieldEmbedding``, whose gradient is then a sparse COO
  tensor) go to ``torch.optim.SparseAdam`` (lazy Adam: only the rows in the batch have their moments
  and values updated), all others to Adam. Weight decay applies to the dense group only.
* AMP: ``amp="auto"`` runs forward in bf16 autocast on CUDA (no loss scaling needed), fp32 on CPU.
* Gradient clipping by global norm (dense gradients; sparse ones are left as is).
* Early stopping: after every epoch the ``valid`` split is evaluated; the monitored metric
  (``auc`` / ``logloss`` / ``rmse``) that has not improved for ``patience`` epochs stops training;
  the best weights (``best.pt``, or an in-memory copy without ``out_dir``) are restored at the end.
* Seeding: ``Trainer`` seeds python/numpy/torch (all devices) with ``config.seed`` when built, so
  dropout is reproducible; the loader's shuffle is a stateless function of (seed, epoch). The
  initial weights are drawn when the model is built, before the ``Trainer`` exists: call
  ``seed_everything(seed)`` before building the model (the CLI does) for reproducible runs.
* Checkpoints (``<out>/checkpoints/last.pt``; ``best.pt`` holds the best weights): model weights and
  ``model_config`` (the model's ``config``: ``build_model(schema=..., **model_config)`` rebuilds it),
  optimizer, torch/numpy/python(/CUDA) RNG, loader position (epoch, batches consumed), step and
  early-stopping state — ``fit(resume=...)`` continues bit-exactly (same final weights as an
  uninterrupted run, on the same device and thread count), also mid-epoch. Written atomically
  (temporary file, fsync, ``os.replace``): a process killed at any moment leaves the previous
  complete ``last.pt``, so a run killed between ``checkpoint_every`` checkpoints resumes exactly.
* CPU threads: ``threads=0`` (default) uses the CPUs that are idle when training starts
  (``fastint.train.threads``: the affinity mask minus the load average, shared by the processes
  of one host under ``torchrun``); torch's own default (every core) collapses when other processes
  hold cores (measured 12.6k vs 720 samples/s). Bit-identical reruns need the same thread count:
  pass ``threads`` explicitly for them.
* Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised (nccl on
  CUDA, gloo on CPU), the model wrapped in DDP, each rank reads its shard of every epoch
  (``batch_size`` is per rank: the global batch is ``batch_size * world_size``); every rank
  evaluates the full valid split (identical weights give identical decisions, no broadcast needed);
  rank 0 alone writes checkpoints and logs.
* Sharded embeddings: a model built with ``embedding="torchrec"`` (``fastint.torchrec``) is wrapped
  in torchrec's ``DistributedModelParallel`` instead of DDP, also in one process (a 1-rank process
  group is created when none exists): its tables sharded ``sharding``-wise (``auto``: torchrec's
  planner), ``embedding_optimizer`` (``auto`` = ``rowwise_adagrad``, ``adam`` (CUDA only) or ``sgd``;
  learning rate ``lr``) fused into their backward, the dense part data-parallel with ``optimizer``. Its
  checkpoints keep the tables sharded: ``<name>`` holds the dense state and names the directory
  ``<name>-step<N>-<time>/`` that every rank writes its shards and fused-optimizer state into
  (``torch.distributed.checkpoint``) before ``<name>`` is replaced atomically (a killed run leaves
  the previous pair intact; older directories are removed after); such a model needs ``out_dir``.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from fastint.data.dataset import Dataset
from fastint.data.loader import BatchLoader
from fastint.metrics import HIGHER_IS_BETTER, compute_metrics
from fastint.train.threads import available_cpus, cpu_threads_per_process

OPTIMIZERS = ("adam", "adamw", "sparse_adam")
SHARDINGS = ("auto", "table_wise", "row_wise", "column_wise")     # of models on torchrec embeddings
EMBEDDING_OPTIMIZERS = ("auto", "rowwise_adagrad", "adam", "sgd")  # auto: rowwise_adagrad; adam: CUDA only


@dataclass
class TrainConfig:
    epochs: int = 3
    batch_size: int = 1024
    eval_batch_size: int = 8192
    lr: float = 3e-3               # tuned on the synthetic data (the papers use 1e-3)
    weight_decay: float = 0.0
    optimizer: str = "adam"
    grad_clip: float = 0.0          # max global gradient norm; 0 = off
    amp: str = "auto"               # auto (bf16 on CUDA) | bf16 | off
    metric: str = "auto"            # auto (auc, rmse for regression) | auc | logloss | rmse
    patience: int = 2               # epochs without improvement before stopping; 0 = never stop early
    seed: int = 0
    device: str = "auto"            # auto (cuda if available) | cpu | cuda | cuda:N
    prefetch: int = 2               # batches assembled ahead in a background thread; 0 = off
    checkpoint_every: int = 0       # also checkpoint every N steps (0: at epoch ends only)
    stop_after_steps: int = 0       # checkpoint and return after N steps in total (0: off)
    threads: int = 0                # torch CPU threads (0: auto, the idle CPUs: fastint.train.threads)
    sharding: str = "auto"          # torchrec embeddings: auto | table_wise | row_wise | column_wise
    embedding_optimizer: str = "auto"  # torchrec embeddings, fused: auto (rowwise_adagrad) | adam | sgd
    progress: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):  # the type of each default; an int is a valid float
            value, kind = getattr(self, f.name), type(f.default)
            if not isinstance(value, (int, float) if kind is float else kind):
                raise ValueError(f"training option {f.name} must be {kind.__name__}, got {value!r}")
        checks = {
            "epochs": self.epochs >= 1, "batch_size": self.batch_size >= 1,
            "eval_batch_size": self.eval_batch_size >= 1, "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0, "optimizer": self.optimizer in OPTIMIZERS,
            "grad_clip": self.grad_clip >= 0, "amp": self.amp in ("auto", "bf16", "off"),
            "metric": self.metric in ("auto", *HIGHER_IS_BETTER), "patience": self.patience >= 0,
            "prefetch": self.prefetch >= 0, "checkpoint_every": self.checkpoint_every >= 0,
            "stop_after_steps": self.stop_after_steps >= 0, "threads": self.threads >= 0,
            "sharding": self.sharding in SHARDINGS,
            "embedding_optimizer": self.embedding_optimizer in EMBEDDING_OPTIMIZERS,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            choices = {"optimizer": OPTIMIZERS, "sharding": SHARDINGS, "embedding_optimizer": EMBEDDING_OPTIMIZERS}
            raise ValueError(f"invalid training option {bad[0]}={getattr(self, bad[0])!r}"
                             + (f" (choose from {', '.join(choices[bad[0]])})" if bad[0] in choices else ""))

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**d)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r} (auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def seed_everything(seed: int) -> None:
    """Seed the global RNGs that a run draws from: python ``random``, numpy's legacy global RNG and
    torch's generators on every device (``torch.manual_seed`` also seeds all CUDA devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) — initialises the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _uses_torchrec(model: nn.Module) -> bool:
    """Whether ``model`` holds torchrec embeddings (only possible once ``fastint.torchrec`` is imported)."""
    module = sys.modules.get("fastint.torchrec")
    return module is not None and bool(module.torchrec_embeddings(model))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters owned directly by modules flagged ``sparse=True`` (their gradients are sparse)."""
    seen, out = set(), []
    for module in model.modules():
        if getattr(module, "sparse", False) is True:
            for p in module.parameters(recurse=False):
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def build_optimizers(model: nn.Module, config: TrainConfig) -> list[torch.optim.Optimizer]:
    """The optimizers of ``config.optimizer`` over the model's trainable parameters, plus, for a
    model with ``architecture_optimizer()`` returning one (AIM/AutoFIS in a search stage: GRDA
    over its gates), that optimizer last, its parameters left out of the others. The list is a
    function of the model's config, so a checkpoint's optimizer states load in the same order."""
    architecture = getattr(model, "architecture_optimizer", lambda: None)()
    extra = [architecture] if architecture is not None else []
    searched = {id(p) for opt in extra for g in opt.param_groups for p in g["params"]}
    # parameters that torch's _apply_optimizer_in_backward steps inside the backward (torchrec's fused tables)
    params = [p for p in model.parameters()
              if p.requires_grad and id(p) not in searched and not hasattr(p, "_in_backward_optimizers")]
    if config.optimizer == "adamw":
        return [torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay), *extra]
    sparse = _sparse_parameters(model) if config.optimizer == "sparse_adam" else []
    if config.optimizer == "sparse_adam" and not sparse:
        raise ValueError("optimizer sparse_adam needs a model built with sparse=True "
                         "(no module with sparse gradients found)")
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in params if id(p) not in sparse_ids]
    opts: list[torch.optim.Optimizer] = []
    if dense:
        opts.append(torch.optim.Adam(dense, lr=config.lr, weight_decay=config.weight_decay))
    if sparse:
        opts.append(torch.optim.SparseAdam(sparse, lr=config.lr))
    return opts + extra


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, split: str, batch_size: int = 8192,
            device: torch.device | str = "cpu", amp: bool = False, prefetch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of ``model`` on a whole split, in the split's row order (eval mode)."""
    model.eval()
    device = torch.device(device)
    loader = BatchLoader(data, split, batch_size, shuffle=False, device=device, prefetch=prefetch)
    labels, scores = [], []
    for batch in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            s = model(batch)
        scores.append(s.float().cpu().numpy())
        labels.append(batch.label.cpu().numpy())
    if not scores:
        raise ValueError(f"split {split!r} is empty")
    return np.concatenate(labels), np.concatenate(scores)


class Trainer:
    """Train ``model`` on ``data`` (splits ``train``/``valid``/``test``); see the module docstring."""

    def __init__(self, model: nn.Module, data: Dataset, config: TrainConfig | None = None,
                 out_dir: str | None = None, log: Callable[[str], None] = print):
        self.config = config or TrainConfig()
        self.data = data
        self.out_dir = out_dir
        seed_everything(self.config.seed)
        self.rank, self.world_size, self.device = init_distributed(resolve_device(self.config.device))
        self.log = log if self.rank == 0 else (lambda msg: None)
        threads = self.config.threads or (cpu_threads_per_process() if self.device.type == "cpu" else 0)
        if threads:
            torch.set_num_threads(threads)
        if self.device.type == "cpu":
            how = "--threads" if self.config.threads else f"auto: the idle ones of {available_cpus()} CPUs"
            self.log(f"training on {torch.get_num_threads()} CPU thread(s) ({how})")
        self.model = model.to(self.device)
        self.task = getattr(model, "task", "binary")
        self.metric = self.config.metric if self.config.metric != "auto" else (
            "rmse" if self.task == "regression" else "auc")
        if self.task == "regression" and self.metric == "auc":
            raise ValueError("metric auc needs a binary model; use rmse for regression")
        self.net = self.model
        self.sharded = _uses_torchrec(self.model)
        if not self.sharded and (self.config.sharding, self.config.embedding_optimizer) != ("auto", "auto"):
            raise ValueError("sharding and embedding_optimizer apply to models built with embedding='torchrec'")
        if self.sharded:
            if out_dir is None:
                raise ValueError("a model on torchrec embeddings needs out_dir (for its sharded checkpoints)")
            from fastint.torchrec import shard_model
            if not dist.is_initialized():  # one process: DMP still needs a process group
                dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo", store=dist.HashStore(),
                                        rank=0, world_size=1)
            optimizer = self.config.embedding_optimizer
            self.net = shard_model(self.model, self.device, sharding=self.config.sharding, lr=self.config.lr,
                                   optimizer="rowwise_adagrad" if optimizer == "auto" else optimizer)
        elif self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.optimizers = build_optimizers(self.model, self.config)
        self.amp = self.config.amp == "bf16" or (self.config.amp == "auto" and self.device.type == "cuda")
        self.loader = BatchLoader(data, "train", self.config.batch_size, shuffle=True, seed=self.config.seed,
                                  device=self.device, prefetch=self.config.prefetch,
                                  rank=self.rank, world_size=self.world_size)
        self.global_step = 0
        self._best_weights: dict | None = None
        self.state = {"best": None, "best_epoch": -1, "bad_epochs": 0, "stopped": False, "history": [],
                      "train_samples": 0, "train_seconds": 0.0}

    # ------------------------------------------------------------------ training
    def loss(self, batch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            scores = self.net(batch)
        scores = scores.float()
        if self.task == "regression":
            data_loss = nn.functional.mse_loss(scores, batch.label)
        else:
            data_loss = nn.functional.binary_cross_entropy_with_logits(scores, batch.label)
        return data_loss + self.model.regularization_loss()

    def _step(self, batch) -> torch.Tensor:
        """One optimizer step; returns the (detached) loss without synchronising the device."""
        self.net.train()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()
        if self.config.grad_clip > 0:
            dense = [p for p in self.model.parameters() if p.grad is not None and not p.grad.is_sparse]
            nn.utils.clip_grad_norm_(dense, self.config.grad_clip)
        for opt in self.optimizers:
            opt.step()
        self.global_step += 1
        return loss.detach()

    def fit(self, resume: str | None = None) -> dict:
        """Train until ``epochs``, early stopping or ``stop_after_steps``. Returns a summary:
        ``{"interrupted", "epochs", "global_step", "best_epoch", "valid", "test",
        "throughput"}`` (metrics of the restored best weights; ``None`` when interrupted)."""
        if resume:
            self.load_checkpoint(resume)
        cfg = self.config
        while self.loader.epoch < cfg.epochs and not self.state["stopped"]:
            epoch = self.loader.epoch
            bar = tqdm(total=len(self.loader), initial=self.loader.position, desc=f"epoch {epoch + 1}",
                       disable=not cfg.progress or self.rank != 0, leave=False, dynamic_ncols=True)
            start = epoch_start = time.perf_counter()
            epoch_samples = 0
            for batch in self.loader:
                loss = self._step(batch)
                self.state["train_samples"] += batch.batch_size * self.world_size
                epoch_samples += batch.batch_size * self.world_size
                bar.update(1)
                if self.global_step % 20 == 0:
                    rate = epoch_samples / max(time.perf_counter() - epoch_start, 1e-9)
                    bar.set_postfix(loss=f"{float(loss):.4f}", samples_per_s=f"{rate:,.0f}")
                if cfg.stop_after_steps and self.global_step >= cfg.stop_after_steps:
                    self.state["train_seconds"] += time.perf_counter() - start
                    bar.close()
                    self.save_checkpoint("last.pt")
                    return {"interrupted": True, "global_step": self.global_step}
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self.state["train_seconds"] += time.perf_counter() - start
                    self.save_checkpoint("last.pt")
                    start = time.perf_counter()
            self.state["train_seconds"] += time.perf_counter() - start
            bar.close()
            self._end_epoch(epoch)
        return self._finish()

    def _end_epoch(self, epoch: int) -> None:
        valid = self.evaluate("valid")
        value = valid[self.metric]
        best = self.state["best"]
        improved = best is None or (value > best if HIGHER_IS_BETTER[self.metric] else value < best)
        if improved:
            self.state.update(best=value, best_epoch=epoch, bad_epochs=0)
            self.save_checkpoint("best.pt", weights_only=True)
            if self.out_dir is None:  # no checkpoint directory: keep the best weights in memory
                self._best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.state["bad_epochs"] += 1
            if self.config.patience and self.state["bad_epochs"] >= self.config.patience:
                self.state["stopped"] = True
        self.state["history"].append({"epoch": epoch + 1, "step": self.global_step, **valid})
        self.log(f"epoch {epoch + 1}: valid " + _fmt(valid) + (" (best)" if improved else "")
                 + f"  [{self.throughput:,.0f} samples/s]")
        self.save_checkpoint("last.pt")

    def _finish(self) -> dict:
        best = self._checkpoint_path("best.pt")
        if best and os.path.isfile(best):
            self._load_weights(torch.load(best, map_location=self.device, weights_only=False), best)
        elif self._best_weights is not None:
            self.model.load_state_dict(self._best_weights)
        return {"interrupted": False, "epochs": self.loader.epoch, "global_step": self.global_step,
                "best_epoch": self.state["best_epoch"] + 1, "early_stopped": self.state["stopped"],
                "valid": self.evaluate("valid"), "test": self.evaluate("test"),
                "throughput": self.throughput, "history": self.state["history"]}

    @property
    def throughput(self) -> float:
        """Training samples per second (all ranks), loader included, evaluation excluded."""
        secs = self.state["train_seconds"]
        return self.state["train_samples"] / secs if secs > 0 else float("nan")

    # ---------------------------------------------------------------- evaluation
    def predict(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of a whole split, in the split's row order."""
        return predict(self.model, self.data, split, self.config.eval_batch_size, self.device, self.amp,
                       self.config.prefetch)

    def evaluate(self, split: str) -> dict[str, float]:
        labels, scores = self.predict(split)
        return compute_metrics(self.task, labels, scores)

    # --------------------------------------------------------------- checkpoints
    def _checkpoint_path(self, name: str) -> str | None:
        return os.path.join(self.out_dir, "checkpoints", name) if self.out_dir else None

    def save_checkpoint(self, name: str, weights_only: bool = False) -> None:
        path = self._checkpoint_path(name)
        if path is None:
            return
        if self.sharded:  # every rank first writes its shards, into a new directory named by rank 0
            from fastint.torchrec import save_sharded
            shards = [f"{path}-step{self.global_step}-{time.time_ns()}"]
            dist.broadcast_object_list(shards, src=0)
            weights = save_sharded(self.net, shards[0], weights_only)
        if self.rank != 0:
            self._barrier()
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        ckpt = {"model": weights if self.sharded else self.model.state_dict(),
                "model_config": getattr(self.model, "config", {}), "global_step": self.global_step}
        if self.sharded:
            ckpt["shards"] = os.path.basename(shards[0])
        if not weights_only:
            ckpt.update(optimizers=[o.state_dict() for o in self.optimizers], rng=_rng_state(),
                        loader=self.loader.state_dict(), state=self.state, train_config=asdict(self.config))
        _save_atomically(ckpt, path)
        if self.sharded:  # the directories that no checkpoint ``name`` refers to any more
            for stale in set(glob.glob(f"{glob.escape(path)}-step*")) - set(shards):
                shutil.rmtree(stale)
        self._barrier()

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def load_checkpoint(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if "optimizers" not in ckpt:
            raise ValueError(f"{path} holds weights only; resume needs a full checkpoint (last.pt)")
        self._load_weights(ckpt, path, with_optimizer=True)
        if len(ckpt["optimizers"]) != len(self.optimizers):
            raise ValueError(f"{path} was written with a different optimizer setup")
        for opt, state in zip(self.optimizers, ckpt["optimizers"]):
            opt.load_state_dict(state)
        self.loader.load_state_dict(ckpt["loader"])
        self.global_step = ckpt["global_step"]
        self.state = ckpt["state"]
        _set_rng_state(ckpt["rng"])

    def _load_weights(self, ckpt: dict, path: str, with_optimizer: bool = False) -> None:
        """``load_weights`` into this trainer's model (and fused optimizer, ``with_optimizer``)."""
        if ("shards" in ckpt) != self.sharded:
            raise ValueError(f"{path} was written by a model {'with' if 'shards' in ckpt else 'without'} "
                             f"torchrec embeddings")
        fused = self.net.fused_optimizer if self.sharded and with_optimizer else None
        load_weights(self.net if self.sharded else self.model, ckpt, path, fused)


def load_weights(module: nn.Module, ckpt: dict, path: str, fused_optimizer=None) -> None:
    """The weights of checkpoint ``ckpt``, read from ``path``, into ``module``: its ``model`` entry;
    for a model on torchrec embeddings also the tables of the directory ``ckpt["shards"]``, into the
    DMP-wrapped model (a collective) or an unsharded one (``build_model(..., embedding="torchrec")``
    in one process, e.g. to evaluate), and ``fused_optimizer``'s state when given."""
    if "shards" not in ckpt:
        module.load_state_dict(ckpt["model"])
        return
    from fastint.torchrec import load_sharded
    load_sharded(module, ckpt["model"], os.path.join(os.path.dirname(path), ckpt["shards"]), fused_optimizer)


def _save_atomically(obj, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial ``path``: the bytes go to ``<path>.tmp``
    in the same directory, are flushed and fsync'ed, and ``os.replace`` swaps the file in (atomic);
    the directory is then fsync'ed (POSIX) so that the rename itself is durable. A process killed
    mid-write leaves the previous ``path`` intact and at most a stale ``.tmp``, which the next save
    overwrites."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if os.name == "posix":  # a directory cannot be opened for fsync on Windows
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) and not math.isnan(v) else f"{k}={v}"
                    for k, v in metrics.items())
