"""Test configuration: without CUDA, Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before triton is imported anywhere, hence here, first.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests.helpers import KERNEL_DEVICE  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded_single_thread():
    """Seed 0 and one torch CPU thread: on this 2-core machine two OpenMP threads competing with
    any other process made small training steps ~20x slower (measured 4.6k vs 87k samples/s)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def kernel_device() -> str:
    """Where the Triton kernels under test run: CUDA if present, else CPU (interpreter)."""
    return KERNEL_DEVICE


SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture
def shared_data() -> str:
    """Path of ../shared/data (real Criteo/MovieLens samples); skips when absent."""
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.skip("../shared/data is not present in this checkout")
    return path
