"""CTRModel: what every fastint model offers the trainer and the CLI."""
from __future__ import annotations

import torch
from torch import nn

from fastint.schema import Batch, Schema

TASKS = ("binary", "regression")


class CTRModel(nn.Module):
    """A model maps a ``Batch`` to one score per sample, ``[B]``.

    ``task="binary"``: the score is a logit (train with BCE-with-logits; ``predict`` applies the
    sigmoid). ``task="regression"``: the score is the prediction itself (squared loss).
    ``config`` holds the constructor's hyper-parameters (``build_model`` fills it) so checkpoints can
    rebuild the model. ``regularization_loss()`` is added to the training loss by the trainer.
    """

    def __init__(self, schema: Schema, task: str = "binary"):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.schema = schema
        self.task = task
        self.config: dict = {}

    def regularization_loss(self) -> torch.Tensor:
        return torch.zeros((), device=next(self.parameters()).device)

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        score = self(batch)
        return torch.sigmoid(score) if self.task == "binary" else score

    def explain(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Attention maps that explain the predictions for ``batch`` (see each model)."""
        raise NotImplementedError(f"{type(self).__name__} has no explanation")
