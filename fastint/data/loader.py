"""``BatchLoader``: mini-batches straight from (memory-mapped) columns, one fancy-index per column.

Per epoch the split's row indices are permuted with ``default_rng((seed, epoch))`` (stateless: any
epoch's order can be recomputed, which makes resuming exact). Batch ``k`` takes the slice
``perm[k*B:(k+1)*B]``, sorts it (sequential page access in the memmaps; the order inside a batch does
not matter to training) and gathers every column with one ``np.take`` — no per-row ``__getitem__``.
int32 ids are widened to int64 for ``fastint.schema.Batch``.

Distributed (``world_size > 1``): every rank draws the same permutation, truncated to a multiple of
``world_size``, and takes the strided shard ``perm[rank::world_size]`` (as ``DistributedSampler``
with ``drop_last``), so all ranks run the same number of steps.

``prefetch > 0`` assembles (and pins) up to that many batches ahead in a background thread.
``state_dict()`` records (epoch, batches consumed in it); ``load_state_dict`` resumes there.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from fastint.data.dataset import Dataset
from fastint.schema import Batch


class BatchLoader:
    def __init__(self, data: Dataset, split: str | np.ndarray, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, device: str | torch.device = "cpu",
                 pin_memory: bool | None = None, prefetch: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
        self.data = data
        self.indices = np.asarray(data.split(split) if isinstance(split, str) else split, dtype=np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.device = torch.device(device)
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.prefetch = prefetch
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.position = 0  # batches of the current epoch already consumed
        self._columns = {k: v for k, v in data.columns.items() if k != "prob"}

    @property
    def num_rows(self) -> int:
        """Rows this rank sees per epoch."""
        return len(self.indices) // self.world_size if self.world_size > 1 else len(self.indices)

    def __len__(self) -> int:
        n = self.num_rows
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's row indices for ``epoch``, in visiting order."""
        idx = self.indices
        if self.shuffle:
            idx = idx[np.random.default_rng((self.seed, epoch)).permutation(len(idx))]
        if self.world_size > 1:
            idx = idx[: len(idx) - len(idx) % self.world_size][self.rank::self.world_size]
        return idx

    def gather(self, rows: np.ndarray) -> Batch:
        """The Batch of the given row indices (CPU tensors, pinned if configured)."""
        rows = np.sort(rows)
        out = {}
        for name, col in self._columns.items():
            values = np.take(col, rows, axis=0)
            if values.dtype == np.int32:
                values = values.astype(np.int64)
            out[name] = torch.from_numpy(np.ascontiguousarray(values))
        batch = Batch(**out)
        return batch.pin_memory() if self.pin_memory else batch

    def _produce(self, order: np.ndarray, start: int) -> Iterator[Batch]:
        for k in range(start, len(self)):
            yield self.gather(order[k * self.batch_size:(k + 1) * self.batch_size])

    def __iter__(self) -> Iterator[Batch]:
        """The remaining batches of the current epoch, then the epoch counter advances."""
        order = self.epoch_order(self.epoch)
        batches = self._produce(order, self.position)
        if self.prefetch > 0:
            batches = _prefetched(batches, self.prefetch)
        non_blocking = self.pin_memory and self.device.type == "cuda"
        for batch in batches:
            self.position += 1
            yield batch.to(self.device, non_blocking=non_blocking) if self.device.type != "cpu" else batch
        self.epoch += 1
        self.position = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"loader state was saved with seed {state['seed']}, this loader uses {self.seed}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


_DONE = object()


def _prefetched(batches: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run ``batches`` in a daemon thread, ``depth`` items ahead; exceptions are re-raised here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            for b in batches:
                while not stop.is_set():
                    try:
                        q.put(b, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as err:  # noqa: BLE001  (handed to the consumer)
            q.put(err)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
