"""The models: thin compositions of ``fastint.nn`` (they never call kernels directly)."""
from __future__ import annotations

import inspect

from fastint.models.afm import AFM
from fastint.models.autoint import AutoInt
from fastint.models.base import CTRModel
from fastint.models.interhat import InterHAt
from fastint.schema import Schema

MODELS: dict[str, type[CTRModel]] = {"autoint": AutoInt, "afm": AFM, "interhat": InterHAt}


def build_model(name: str, schema: Schema, **hparams) -> CTRModel:
    """Build model ``name`` (``autoint``, ``afm``, ``interhat``) for ``schema``; ``hparams`` go to its
    constructor and are kept in ``model.config`` (with the name) so a checkpoint can rebuild it."""
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    try:
        inspect.signature(MODELS[key]).bind(schema, **hparams)
    except TypeError as err:
        raise ValueError(f"bad hyper-parameters for {key}: {err}") from None
    model = MODELS[key](schema, **hparams)
    model.config = {"name": key, **hparams}
    return model


__all__ = ["AFM", "AutoInt", "CTRModel", "InterHAt", "MODELS", "build_model"]
