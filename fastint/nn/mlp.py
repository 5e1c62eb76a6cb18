"""MLP: the feed-forward towers of AutoInt+ and InterHAt."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLP(nn.Sequential):
    """``in_dim -> hidden_units... -> out_dim``: Linear + ReLU (+ dropout) per hidden layer, then a
    final Linear with no activation. ``bias=False`` drops every bias (InterHAt's output layers)."""

    def __init__(self, in_dim: int, hidden_units: Sequence[int], out_dim: int = 1, *,
                 dropout: float = 0.0, bias: bool = True):
        layers: list[nn.Module] = []
        for width in hidden_units:
            layers += [nn.Linear(in_dim, width, bias=bias), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim, bias=bias))
        super().__init__(*layers)
