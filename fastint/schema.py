"""Describing the input fields of a CTR dataset and one batch of them.

A ``Schema`` is an ordered tuple of ``Field``s; the field order is the order of the ``M`` axis of
the ``[B, M, d]`` field embeddings every interaction layer consumes.

A ``Batch`` holds one mini-batch, grouped by field kind, each group in schema order:

* ``categorical``: int64 ``[B, Mc]`` field-local ids; an id outside ``[0, vocab_size)``
  (including negative, e.g. unseen or missing) selects that field's out-of-vocabulary row.
* ``numeric``: float32 ``[B, Mn]`` already-transformed values; must be finite.
* ``multi``: int64 ``[B, Mm, L]`` field-local ids padded with ``-1`` (padding contributes
  nothing; ids >= vocab_size select the OOV row); pooled by the field's ``pooling``.
* ``label``: float32 ``[B]`` (0/1 for CTR), optional at inference.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields as dc_fields
from typing import Literal

import torch

FieldKind = Literal["categorical", "numeric", "multi"]


@dataclass(frozen=True)
class Field:
    """One input field. ``vocab_size`` counts in-vocabulary ids (categorical/multi only)."""

    name: str
    kind: FieldKind
    vocab_size: int = 0
    pooling: Literal["mean", "sum"] = "mean"

    def __post_init__(self) -> None:
        if self.kind not in ("categorical", "numeric", "multi"):
            raise ValueError(f"field {self.name!r}: unknown kind {self.kind!r}")
        if self.kind != "numeric" and self.vocab_size < 1:
            raise ValueError(f"field {self.name!r}: {self.kind} field needs vocab_size >= 1")
        if self.pooling not in ("mean", "sum"):
            raise ValueError(f"field {self.name!r}: pooling must be 'mean' or 'sum'")


@dataclass(frozen=True)
class Schema:
    """Ordered fields of a dataset."""

    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", tuple(self.fields))
        if not self.fields:
            raise ValueError("a schema needs at least one field")
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate field names in schema: {names}")

    def of_kind(self, kind: FieldKind) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.kind == kind)

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def to_dict(self) -> dict:
        return {"fields": [f.__dict__.copy() for f in self.fields]}

    @classmethod
    def from_dict(cls, d: dict) -> "Schema":
        return cls(tuple(Field(**f) for f in d["fields"]))


@dataclass
class Batch:
    """One mini-batch; see the module docstring for shapes and conventions."""

    categorical: torch.Tensor | None = None
    numeric: torch.Tensor | None = None
    multi: torch.Tensor | None = None
    label: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        for t in (self.categorical, self.numeric, self.multi, self.label):
            if t is not None:
                return t.shape[0]
        raise ValueError("empty Batch: no tensors")

    def map(self, fn) -> "Batch":
        """A new Batch with ``fn`` applied to every tensor (labels and ``extra`` included)."""
        def apply(v):
            return fn(v) if isinstance(v, torch.Tensor) else v
        values = {f.name: apply(getattr(self, f.name)) for f in dc_fields(self) if f.name != "extra"}
        return Batch(**values, extra={k: apply(v) for k, v in self.extra.items()})

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self.map(lambda t: t.pin_memory())
