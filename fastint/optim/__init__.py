"""Optimizers the papers need beyond torch.optim."""
from fastint.optim.grda import GRDA

__all__ = ["GRDA"]
