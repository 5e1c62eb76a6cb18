"""Public functional API: each op dispatches to its fused kernel (CUDA, or forced ``kernel``
backend) or to its plain-PyTorch reference; all are torch.library custom ops with autograd."""
from fastint.ops.afm_pooling import afm_pooling
from fastint.ops.embedding_bag import embedding_bag
from fastint.ops.field_attention import field_attention
from fastint.ops.hierarchical_aggregation import hierarchical_aggregation
from fastint.ops.multi_function_interactions import multi_function_interactions

__all__ = ["afm_pooling", "embedding_bag", "field_attention", "hierarchical_aggregation",
           "multi_function_interactions"]
