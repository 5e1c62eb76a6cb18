"""Drop-in speed-up for models built with DeepCTR-Torch or FuxiCTR: swap their interaction layers
for fastint's fused ops, in place, keeping every parameter.

    import fastint.patch
    report = fastint.patch.apply(model)     # or apply_to_deepctr(model) / apply_to_fuxictr(model)
    print(report)                           # what now runs a fused op, what was left alone and why
    ...                                     # train / evaluate / save as before
    fastint.patch.revert(model)             # the library's own forwards again

What is replaced (see ``fastint.patch.deepctr`` and ``fastint.patch.fuxictr`` for the exact maths):

=============== ========================================= ===================================
library         layer                                     fused op
=============== ========================================= ===================================
DeepCTR-Torch   ``InteractingLayer`` (AutoInt)            ``field_attention``
DeepCTR-Torch   ``AFMLayer`` (AFM)                        ``afm_pooling``
FuxiCTR         AutoInt's ``MultiHeadSelfAttention``      ``field_attention``
FuxiCTR         AFM's attention pooling                   ``afm_pooling``
FuxiCTR         InterHAt's attentional aggregation        ``hierarchical_aggregation``
=============== ========================================= ===================================

The patch binds a fused ``forward`` to each matching module instance; it creates no parameter
and moves none, so optimizers already built, ``state_dict``s and checkpoints work both ways (a
checkpoint saved patched loads unpatched and back). Configurations the fused ops cannot express
are left alone with a warning naming why, and listed in the report. The ops dispatch as usual:
the Triton kernels on CUDA tensors, the PyTorch reference on the CPU (see ``fastint.use_backend``).
"""
from __future__ import annotations

from torch import nn

from fastint.patch import deepctr, fuxictr
from fastint.patch._core import PatchReport, Replaced, Skipped, patch_modules, revert

LIBRARIES = {"deepctr": deepctr.PATCHERS, "fuxictr": fuxictr.PATCHERS}

__all__ = ["PatchReport", "Replaced", "Skipped", "apply", "apply_to_deepctr", "apply_to_fuxictr", "revert"]


def apply(model: nn.Module, *, libraries: tuple[str, ...] = tuple(LIBRARIES),
          keep_attention: bool = False) -> PatchReport:
    """Replace, in place, the interaction layers of ``model`` that the fused ops reproduce.

    Args:
        model: a model built with DeepCTR-Torch or FuxiCTR (or any module containing their layers).
        libraries: which libraries' layers to look for (``"deepctr"``, ``"fuxictr"``).
        keep_attention: keep the attention side effects users may read (DeepCTR's
            ``InteractingLayer.normalized_att_scores`` and ``AFMLayer.normalized_att_score``).
            Off by default: the fused ops then never write the attention tensors, and a stale
            attribute left by an earlier unpatched call is deleted rather than kept.

    Returns:
        a ``PatchReport``: the modules replaced and those left alone, each with its reason.
        Patching twice is harmless (the second report lists the modules as already patched).
    """
    unknown = set(libraries) - set(LIBRARIES)
    if unknown:
        raise ValueError(f"unknown libraries {sorted(unknown)}; expected some of {sorted(LIBRARIES)}")
    patchers = [p for name in libraries for p in LIBRARIES[name]]
    return patch_modules(model, patchers, keep_attention=keep_attention, report=PatchReport())


def apply_to_deepctr(model: nn.Module, *, keep_attention: bool = False) -> PatchReport:
    """``apply`` restricted to DeepCTR-Torch's layers."""
    return apply(model, libraries=("deepctr",), keep_attention=keep_attention)


def apply_to_fuxictr(model: nn.Module, *, keep_attention: bool = False) -> PatchReport:
    """``apply`` restricted to FuxiCTR's layers."""
    return apply(model, libraries=("fuxictr",), keep_attention=keep_attention)
