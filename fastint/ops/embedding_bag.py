"""Public embedding_bag op (interim: reference only, being replaced by the C++ op)."""
from fastint.reference.embedding_bag import embedding_bag  # noqa: F401
