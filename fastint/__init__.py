"""fastint: fused GPU kernels for CTR feature-interaction models."""
import torch  # noqa: F401  (fastint._C links against torch's libraries: import torch first)

from fastint import _C  # noqa: F401  (registers the fastint::* C++ ops)
from fastint._backend import current_backend, use_backend
from fastint.schema import Batch, Field, Schema

__all__ = ["Batch", "Field", "Schema", "current_backend", "use_backend"]
__version__ = "0.2.0"
