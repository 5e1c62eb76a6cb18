"""CTRModel: what every fastint model offers the trainer and the CLI."""
from __future__ import annotations

import functools
import inspect
from typing import ClassVar

import torch
from torch import nn

from fastint.schema import Batch, Schema

TASKS = ("binary", "regression")


class CTRModel(nn.Module):
    """A model maps a ``Batch`` to one score per sample, ``[B]``.

    ``task="binary"``: the score is a logit (train with BCE-with-logits; ``predict`` applies the
    sigmoid). ``task="regression"``: the score is the prediction itself (squared loss).
    ``regularization_loss()`` is added to the training loss by the trainer.

    A subclass sets ``name`` (its key in ``fastint.models.MODELS``) and takes the schema followed by
    keyword hyper-parameters. Its constructor is wrapped so that every model, however it was built,
    carries ``config = {"name": name, <every hyper-parameter with its value, defaults included>}``:
    ``build_model(config["name"], schema, **rest)`` rebuilds it (this is how checkpoints are loaded).

    Optional: ``explain(batch) -> dict[str, Tensor]``, attention maps explaining the predictions
    (``fastint.train.explain`` draws them). Models without it are trained and evaluated alike; the
    CLI skips their heatmaps.
    """

    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_config(cls.__init__)

    def __init__(self, schema: Schema, task: str = "binary"):
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.schema = schema
        self.task = task

    def regularization_loss(self) -> torch.Tensor:
        return torch.zeros((), device=next(self.parameters()).device)

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        score = self(batch)
        return torch.sigmoid(score) if self.task == "binary" else score


def _recording_config(init):
    """``init`` that then sets ``self.config`` from its bound arguments (all but self and schema).

    In a chain of constructors the outermost one runs its recording last, so a subclass of a model
    records its own hyper-parameters."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        self.config = {"name": self.name,
                       **{k: v for k, v in bound.arguments.items() if k not in ("self", "schema")}}

    return wrapper
