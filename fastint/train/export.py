"""``fastint export``: a trained model as a self-contained ``torch.export`` program.

The program maps plain tensors to scores, ``program(categorical, numeric, multi) -> [B]``
(probabilities for ``task="binary"``, predictions for regression), with the batch size dynamic
(``Batch`` fields: ``categorical`` int64 ``[B, Mc]``, ``numeric`` float32 ``[B, Mn]``, ``multi``
int64 ``[B, Mm, L]``; ``None`` for a kind the schema does not have). It holds the fastint custom ops
it was traced with (``fastint::embedding_bag_forward`` always; the fused interaction ops when
traced on CUDA or with the ``kernel`` backend), so serving needs ``import fastint`` (which registers
them: :func:`load_program` does it) and not the training code. Export on the device type you
serve on: CPU traces the plain-PyTorch interaction path, CUDA the fused kernels. Value checks that
need a host synchronisation (finite numeric features) are not part of the program.
"""
from __future__ import annotations

import torch
from torch import nn

from fastint.schema import Batch

KINDS = ("categorical", "numeric", "multi")
MAX_BATCH = 1 << 24


class Scorer(nn.Module):
    """``model``'s scores from plain tensors: ``forward(categorical, numeric, multi) -> [B]``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, categorical: torch.Tensor | None, numeric: torch.Tensor | None,
                multi: torch.Tensor | None) -> torch.Tensor:
        score = self.model(Batch(categorical=categorical, numeric=numeric, multi=multi))
        return torch.sigmoid(score) if self.model.task == "binary" else score


def export_model(model: nn.Module, example: Batch) -> torch.export.ExportedProgram:
    """``model`` (put in eval mode) traced on ``example`` (a batch of at least 2 rows, on the
    model's device) with a dynamic batch size."""
    if example.batch_size < 2:
        raise ValueError("the example batch needs at least 2 rows (a batch of 1 would be specialised)")
    model.eval()
    args = tuple(getattr(example, kind) for kind in KINDS)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    dynamic = tuple(None if t is None else {0: batch} for t in args)
    with torch.no_grad():
        return torch.export.export(Scorer(model), args, dynamic_shapes=dynamic)


def save_program(program: torch.export.ExportedProgram, path: str) -> None:
    torch.export.save(program, path)


def load_program(path: str):
    """The callable ``program(categorical, numeric, multi) -> [B]`` saved at ``path``."""
    import fastint.ops  # noqa: F401  (registers the custom ops the program calls)
    return torch.export.load(path).module()
