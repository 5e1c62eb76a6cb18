"""AIM (Zhu et al., TKDE) and AutoFIS (Liu et al., KDD 2020): searched, gated feature interactions.

Function-wise embeddings ``E [B, T, M, d]`` (``fastint.nn.aim.FunctionWiseEmbedding``: one table
per interaction function, ``T = F``, or one shared, ``T = 1``; with ``order_tables`` each order has
its own ``T`` tables, as the authors' third-order embeddings; all in one lookup), then per order
``p`` present in ``tuples`` a ``MultiFunctionInteraction`` ``y_p = sum_{f,q} alpha_fq BN(Z)_fq``::

    logit = b + sum_m <w_m, x_m> + sum_p w_p y_p + MLP(E)

``w_p`` (init 1) exist in the retrain stage only, where the gates are fixed (in the search the
gates carry the scale themselves); the MLP's output layer holds the paper's ``w5``.

Stages (``stage``), driven end to end by ``fastint.train.search`` (``fastint train --model aim``):

* ``"interactions"``: the gates of the orders in ``search_orders`` are architecture parameters
  (GRDA with ``interaction_grda`` = ``(lr, c, mu)``), the other orders' gates are trained like
  every weight (kept at their searched values they would be shrunk by GRDA's threshold, and the
  searched order would make up for them);
* ``"dimensions"``: all gates fixed, ``DimensionGates`` ``beta [M, d]`` on ``E`` are the
  architecture parameters (GRDA with ``dimension_grda``);
* ``"retrain"``: the gates fixed, the embeddings reduced to the kept positions ``dims``, plus the
  MLP (``mlp_hidden_units``; on the non-constant columns of the first order's tables).

The selection: ``tuples`` (fields per tuple, orders 2..4 mixed; empty: all pairs) and ``gates``
(per tuple, one value per function; 0 = that function is pruned for the tuple; empty: 0.6 for
all), ``dims`` (per field the kept positions; empty: all). ``architecture_optimizer()`` is the
trainer's hook (``fastint.train.trainer.build_optimizers``): GRDA over ``architecture_parameters()``
(alpha or beta by stage), everything else goes to Adam.

AutoFIS is the special case of one function (inner product) on one shared embedding, stages
``interactions`` and ``retrain``, on an FM base (AutoFM) or a DeepFM base (AutoDeepFM: the MLP is
present in the search too, as in the authors' code). (The authors' AutoFIS code re-initialises the
kept gates to 0.6 and trains them in its retrain stage; here, as AIM specifies, they keep their
searched values and the per-order weights ``w_p`` learn the scale.)

GRDA defaults: the threshold ``c lr^(1/2+mu) t^mu`` has to pass the gates' initial 0.6 towards the
end of a search stage; ``(0.1, 0.12, 0.8)`` and ``(0.1, 0.3, 0.51)`` are tuned for the ~600 / ~470
steps of the default synthetic run (4 / 3 epochs of 160k rows, batch 1024). The authors' Criteo
settings, for tens of thousands of steps per epoch, are ``(0.1, 0.005, 0.9)`` and ``(0.1, 0.005, 0.51)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastint.models.base import CTRModel
from fastint.nn.aim import GATE_INIT, DimensionGates, FunctionWiseEmbedding, MultiFunctionInteraction
from fastint.nn.embedding import FieldEmbedding
from fastint.nn.mlp import MLP
from fastint.optim import GRDA
from fastint.reference.multi_function_interactions import FUNCTIONS, INNER, all_tuples
from fastint.schema import Batch, Schema

STAGES = ("interactions", "dimensions", "retrain")
GRDA_INTERACTIONS = (0.1, 0.12, 0.8)
GRDA_DIMENSIONS = (0.1, 0.3, 0.51)


def _grda(settings: Sequence[float], name: str) -> tuple[float, float, float]:
    """``(lr, c, mu)``, checked by GRDA itself (ValueError naming ``name``)."""
    if len(settings) != 3:
        raise ValueError(f"{name} must be (lr, c, mu), got {list(settings)}")
    lr, c, mu = (float(v) for v in settings)
    try:
        GRDA([nn.Parameter(torch.zeros(()))], lr=lr, c=c, mu=mu)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return lr, c, mu


class AIM(CTRModel):
    name = "aim"

    def __init__(self, schema: Schema, *, stage: str = "interactions", embed_dim: int = 16,
                 functions: Sequence[str] = FUNCTIONS, shared_embedding: bool = False, order_tables: bool = True,
                 tuples: Sequence[Sequence[int]] = (), gates: Sequence[Sequence[float]] = (),
                 search_orders: Sequence[int] = (2,), dims: Sequence[Sequence[int]] = (),
                 mlp_hidden_units: Sequence[int] = (128, 128), mlp_dropout: float = 0.0,
                 mlp_in_search: bool = False, interaction_grda: Sequence[float] = GRDA_INTERACTIONS,
                 dimension_grda: Sequence[float] = GRDA_DIMENSIONS, task: str = "binary"):
        super().__init__(schema, task)
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
        if embed_dim < 1:
            raise ValueError(f"embed_dim must be >= 1, got {embed_dim}")
        self.stage, self.functions = stage, tuple(functions)
        self._grda = {"interactions": _grda(interaction_grda, "interaction_grda"),
                      "dimensions": _grda(dimension_grda, "dimension_grda")}
        tuples = [tuple(q) for q in tuples] or [tuple(q) for q in all_tuples(schema.num_fields).tolist()]
        gates = [list(g) for g in gates] or [[GATE_INIT] * len(self.functions)] * len(tuples)
        if len(gates) != len(tuples) or any(len(g) != len(self.functions) for g in gates):
            raise ValueError(f"gates needs one value per function ({len(self.functions)}) for each of the "
                             f"{len(tuples)} tuples")
        orders = sorted({len(q) for q in tuples})
        self.searched_orders = tuple(search_orders) if stage == "interactions" else ()
        if not set(self.searched_orders) <= set(orders):
            raise ValueError(f"search_orders {list(search_orders)} must be orders of the tuples ({orders})")
        self.tables = 1 if shared_embedding else len(self.functions)   # T, per order group
        self.groups = len(orders) if order_tables else 1
        self.embedding = FunctionWiseEmbedding(schema, embed_dim, self.groups * self.tables, dims=dims or None)
        self.linear = FieldEmbedding(schema, 1)
        self.bias = nn.Parameter(torch.zeros(()))
        self.interactions = nn.ModuleList(
            MultiFunctionInteraction(schema.num_fields, embed_dim, [q for q in tuples if len(q) == p],
                                     self.functions,
                                     gates=torch.tensor([g for q, g in zip(tuples, gates) if len(q) == p]).T,
                                     fixed_gates=stage != "interactions")
            for p in orders)
        self.order_weights = nn.Parameter(torch.ones(len(orders))) if stage == "retrain" else None
        self.dimension_gates = DimensionGates(schema.num_fields, embed_dim) if stage == "dimensions" else None
        self.mlp = None
        if mlp_hidden_units and (stage == "retrain" or mlp_in_search):
            columns = self.embedding.kept_columns(self.tables)
            self.register_buffer("mlp_columns", columns, persistent=False)
            width = self.tables * schema.num_fields * embed_dim if columns is None else columns.numel()
            self.mlp = MLP(width, mlp_hidden_units, dropout=mlp_dropout)

    def _group(self, e: torch.Tensor, i: int) -> torch.Tensor:
        """The ``T`` tables of the ``i``-th order: ``[B, T, M, d]``."""
        g = i if self.groups > 1 else 0
        return e[:, g * self.tables:(g + 1) * self.tables]

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits ``[B]``."""
        e = self.embedding(batch)                                        # [B, groups*T, M, d]
        if self.dimension_gates is not None:
            e = self.dimension_gates(e)
        terms = torch.stack([layer(self._group(e, i)) for i, layer in enumerate(self.interactions)], -1)
        interactions = terms @ self.order_weights if self.order_weights is not None else terms.sum(-1)
        logit = self.bias + self.linear(batch).sum(dim=(1, 2)) + interactions
        if self.mlp is not None:
            flat = self._group(e, 0).flatten(1)
            if self.mlp_columns is not None:
                flat = flat.index_select(1, self.mlp_columns)
            logit = logit + self.mlp(flat).squeeze(-1)
        return logit

    def architecture_parameters(self) -> list[nn.Parameter]:
        """The gates the stage searches: ``alpha`` of the searched orders (``interactions``; the
        other orders' gates are trained like every weight), ``beta`` (``dimensions``), none
        (``retrain``)."""
        if self.dimension_gates is not None:
            return [self.dimension_gates.beta]
        return [layer.alpha for layer in self.interactions if layer.order in self.searched_orders]

    def architecture_optimizer(self) -> torch.optim.Optimizer | None:
        """GRDA ``(lr, c, mu)`` of the stage over ``architecture_parameters()`` (``None`` if none):
        ``fastint.train.trainer.build_optimizers`` leaves these parameters out of Adam."""
        params = self.architecture_parameters()
        if not params:
            return None
        lr, c, mu = self._grda[self.stage]
        return GRDA(params, lr=lr, c=c, mu=mu)

    def gate_values(self) -> list[tuple[tuple[int, ...], list[float]]]:
        """``(tuple, [gate per function])`` for every tuple of every order (0 = pruned)."""
        out = []
        for layer in self.interactions:
            gates = layer.gate_matrix().T.tolist()                     # [P, F]
            out += [(tuple(q), g) for q, g in zip(layer.tuples.tolist(), gates)]
        return out


class AutoFIS(AIM):
    name = "autofis"

    def __init__(self, schema: Schema, *, base: str = "fm", stage: str = "interactions", embed_dim: int = 16,
                 tuples: Sequence[Sequence[int]] = (), gates: Sequence[Sequence[float]] = (),
                 search_orders: Sequence[int] = (2,), mlp_hidden_units: Sequence[int] = (128, 128),
                 mlp_dropout: float = 0.0, interaction_grda: Sequence[float] = GRDA_INTERACTIONS,
                 task: str = "binary"):
        if base not in ("fm", "deepfm"):
            raise ValueError(f"base must be 'fm' (AutoFM) or 'deepfm' (AutoDeepFM), got {base!r}")
        if stage == "dimensions":
            raise ValueError("AutoFIS has no dimension search (stages: interactions, retrain)")
        super().__init__(schema, stage=stage, embed_dim=embed_dim, functions=(INNER,), shared_embedding=True,
                         tuples=tuples, gates=gates, search_orders=search_orders,
                         mlp_hidden_units=mlp_hidden_units if base == "deepfm" else (), mlp_dropout=mlp_dropout,
                         mlp_in_search=True, interaction_grda=interaction_grda, task=task)
