"""nn.Modules holding the parameters of the fused ops."""
from fastint.nn.afm import AFMPooling
from fastint.nn.embedding import FieldEmbedding
from fastint.nn.hierarchical import HierarchicalAttention
from fastint.nn.interacting import VARIANTS, InteractingLayer
from fastint.nn.mlp import MLP

__all__ = ["AFMPooling", "FieldEmbedding", "HierarchicalAttention", "InteractingLayer", "MLP", "VARIANTS"]
