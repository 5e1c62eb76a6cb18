"""Tests of fastint.torchrec; they skip where torchrec or FBGEMM is not installed (found without
importing them: importing torchrec costs ~5 s in every test worker that merely collects these files)."""
import importlib.util

import pytest

requires_torchrec = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("torchrec", "fbgemm_gpu")),
    reason="torchrec / fbgemm-gpu not installed (see the README's 'Beyond one GPU')")
