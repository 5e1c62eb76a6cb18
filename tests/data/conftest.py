"""One torch CPU thread for these tests: on a shared 2-core machine, two OpenMP threads competing
with other processes made small training steps ~20x slower (measured: 4.6k vs 87k samples/s)."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
