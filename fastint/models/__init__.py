"""The models: thin compositions of ``fastint.nn`` (they never call kernels directly)."""
from __future__ import annotations

import collections.abc
import inspect
import typing

from fastint.models.afm import AFM
from fastint.models.aim import AIM, AutoFIS
from fastint.models.autoint import AutoInt
from fastint.models.base import CTRModel
from fastint.models.interhat import InterHAt
from fastint.schema import Schema

MODELS: dict[str, type[CTRModel]] = {cls.name: cls for cls in (AutoInt, AFM, InterHAt, AIM, AutoFIS)}
# build_model's ``embedding``: fastint's FieldEmbedding, or torchrec tables (fastint.torchrec), one per
# field or grouped by pooling mode
EMBEDDINGS = {"fastint": None, "torchrec": "per_field", "torchrec_grouped": "grouped"}


def _accepts(annotation, value) -> bool:
    """Whether ``value`` fits a hyper-parameter annotated ``annotation`` (int, float, bool, str or a
    sequence of them; an int is a valid float, a bool is not a number); other annotations accept
    anything."""
    origin = typing.get_origin(annotation)
    if isinstance(origin, type) and issubclass(origin, collections.abc.Sequence):
        item = typing.get_args(annotation)[0]
        return isinstance(value, (list, tuple)) and all(_accepts(item, v) for v in value)
    if annotation in (int, float) and isinstance(value, bool):
        return False
    if annotation is float:
        return isinstance(value, (int, float))
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _describe(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is not None:
        return f"a list of {_describe(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _model_class(name: str) -> type[CTRModel]:
    """The class of model ``name`` (case-insensitive); ValueError listing the models if unknown."""
    if name.lower() not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    return MODELS[name.lower()]


def _check_embedding(embedding) -> None:
    if embedding not in EMBEDDINGS:
        raise ValueError(f"embedding must be one of {', '.join(EMBEDDINGS)}, got {embedding!r}")
    if EMBEDDINGS[embedding]:
        try:
            import fastint.torchrec  # noqa: F401
        except ImportError as err:
            raise ValueError(str(err)) from None


def check_hyperparameters(name: str, hparams: dict) -> None:
    """ValueError naming the first entry of ``hparams`` that is not a keyword argument of model
    ``name``'s constructor or whose value does not fit its annotated type; ``embedding`` (of
    ``build_model``) must be a key of ``EMBEDDINGS`` whose library can be imported."""
    cls = _model_class(name)
    allowed = [p for p in inspect.signature(cls).parameters if p != "schema"]
    types = typing.get_type_hints(cls.__init__)
    for key, value in hparams.items():
        if key == "embedding":
            _check_embedding(value)
            continue
        if key not in allowed:
            raise ValueError(f"no hyper-parameter {key!r} (it has {', '.join(allowed)})")
        if not _accepts(types.get(key), value):
            raise ValueError(f"hyper-parameter {key} must be {_describe(types[key])}, "
                             f"got {value!r} ({type(value).__name__})")


def build_model(name: str, schema: Schema, *, embedding: str = "fastint", **hparams) -> CTRModel:
    """Build model ``name`` (a key of ``MODELS``: ``autoint``, ``afm``, ``interhat``, ``aim``,
    ``autofis``) for ``schema`` with the constructor's keyword ``hparams`` (checked by
    ``check_hyperparameters``). Every model records its ``config``, which rebuilds it:
    ``build_model(schema=schema, **model.config)``.

    ``embedding="torchrec"`` (``"torchrec_grouped"``) puts the model's field embeddings on torchrec
    tables, one per field (per pooling mode), holding the values the model was built with
    (``fastint.torchrec.replace_field_embeddings``); the config then records ``embedding``."""
    check_hyperparameters(name, {**hparams, "embedding": embedding})
    model = _model_class(name)(schema, **hparams)
    if EMBEDDINGS[embedding]:
        from fastint.torchrec import replace_field_embeddings
        replace_field_embeddings(model, EMBEDDINGS[embedding])
        model.config["embedding"] = embedding
    return model


__all__ = ["AFM", "AIM", "AutoFIS", "AutoInt", "CTRModel", "EMBEDDINGS", "InterHAt", "MODELS", "build_model",
           "check_hyperparameters"]
