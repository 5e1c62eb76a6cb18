"""The peers' own models, built small, for the patch tests: DeepCTR-Torch from its PyPI package,
FuxiCTR's model zoo from ../shared/peers (with the ``fuxictr`` package for ``BaseModel``).
Everything skips cleanly when a peer is absent."""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
from collections import OrderedDict
from unittest import mock

import pytest
import torch

MODEL_ZOO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "peers",
                                         "fuxictr-model-zoo"))
VOCAB = 20


class _NoThread:
    """Stands in for ``threading.Thread`` while deepctr_torch imports: its ``__init__`` starts a
    PyPI version check over the network, which tests must not depend on."""

    def __init__(self, *args, **kwargs):
        pass

    def start(self):
        pass


def deepctr():
    """The ``deepctr_torch`` package (imported without its network version check), or skip."""
    if "deepctr_torch" not in sys.modules:
        if importlib.util.find_spec("deepctr_torch") is None:
            pytest.skip("deepctr-torch is not installed")
        with mock.patch.object(threading, "Thread", _NoThread):
            import deepctr_torch  # noqa: F401
    return sys.modules["deepctr_torch"]


def deepctr_features(num_fields: int, dim: int):
    from deepctr_torch.inputs import SparseFeat
    return [SparseFeat(f"c{i}", VOCAB, embedding_dim=dim) for i in range(num_fields)]


def deepctr_inputs(batch: int, num_fields: int) -> torch.Tensor:
    """DeepCTR's model input: ``[B, M]`` feature ids as floats."""
    return torch.randint(0, VOCAB, (batch, num_fields)).float()


def deepctr_model(name: str, num_fields: int = 7, dim: int = 8, **hparams):
    models = deepctr().models
    features = deepctr_features(num_fields, dim)
    if name == "AutoInt":
        hparams = dict(att_layer_num=2, att_head_num=2, dnn_hidden_units=(16,), **hparams)
    return getattr(models, name)(features, features, device="cpu", **hparams)


def model_zoo_class(name: str):
    """FuxiCTR's model-zoo class ``name`` (AutoInt, AFM, InterHAt), or skip."""
    path = os.path.join(MODEL_ZOO, name, "src", f"{name}.py")
    if not os.path.isfile(path):
        pytest.skip("../shared/peers/fuxictr-model-zoo is not present in this checkout")
    module_name = f"fuxictr_model_zoo_{name}"
    if module_name not in sys.modules:
        try:
            import fuxictr.pytorch.models  # noqa: F401
        except ImportError as err:
            pytest.skip(f"fuxictr cannot be imported: {err}")
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return getattr(sys.modules[module_name], name)


def feature_map(num_fields: int, dim: int):
    from fuxictr.features import FeatureMap
    fmap = FeatureMap("patch-test", "unused")
    fmap.features = OrderedDict((f"c{i}", {"type": "categorical", "vocab_size": VOCAB, "source": ""})
                                for i in range(num_fields))
    fmap.labels, fmap.num_fields, fmap.default_emb_dim = ["label"], num_fields, dim
    fmap.total_features = num_fields * VOCAB
    fmap.set_column_index()
    return fmap


def fuxictr_model(name: str, num_fields: int = 7, dim: int = 8, **hparams):
    cls = model_zoo_class(name)
    compile_args = dict(verbose=0, model_root=os.devnull, metrics=["AUC"], optimizer="adam",
                        loss="binary_crossentropy")
    return cls(feature_map(num_fields, dim), embedding_dim=dim, **hparams, **compile_args)


def fuxictr_inputs(batch: int, num_fields: int) -> dict[str, torch.Tensor]:
    return {f"c{i}": torch.randint(0, VOCAB, (batch,)) for i in range(num_fields)}
