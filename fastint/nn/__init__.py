"""nn.Modules holding the parameters of the fused ops."""
from fastint.nn.afm import AFMPooling
from fastint.nn.aim import DimensionGates, FunctionWiseEmbedding, MultiFunctionInteraction
from fastint.nn.embedding import FieldEmbedding
from fastint.nn.hierarchical import HierarchicalAttention
from fastint.nn.interacting import VARIANTS, InteractingLayer
from fastint.nn.mlp import MLP

__all__ = ["AFMPooling", "DimensionGates", "FieldEmbedding", "FunctionWiseEmbedding", "HierarchicalAttention",
           "InteractingLayer", "MLP", "MultiFunctionInteraction", "VARIANTS"]
