"""AFMPooling: parameters and initialisation, forward = the op, FM mode = the naive pairwise sum
(all pairs and a given list), kernel path = reference path, pairs buffer, state_dict round trip."""
import math

import pytest
import torch

from fastint import use_backend
from fastint.nn.afm import AFMPooling
from fastint.reference.afm_pooling import afm_pooling as reference
from tests.helpers import KERNEL_DEVICE, assert_rel_close


def naive_pairwise_sum(e, pairs):
    return sum(e[:, i] * e[:, j] for i, j in pairs)


def test_parameters_and_initialisation():
    module = AFMPooling(16, 8)
    assert module.weight.shape == (16, 8) and module.bias.shape == module.projection.shape == (8,)
    bound = math.sqrt(6 / (16 + 8))
    assert 0.8 * bound < module.weight.abs().max() <= bound
    assert not module.bias.any() and module.projection.abs().max() > 0
    assert "use_attention=True" in repr(module) and "pairs=all" in repr(module)


def test_forward_is_the_op():
    module = AFMPooling(8, 16)
    e = torch.randn(5, 6, 8)
    pooled, a = module(e, return_attention=True)
    weights = module.weight, module.bias, module.projection
    pooled_ref, a_ref = reference(e, *weights, return_attention=True)
    torch.testing.assert_close(pooled, pooled_ref)
    torch.testing.assert_close(a, a_ref)
    assert a.shape == (5, 15)
    torch.testing.assert_close(a.sum(1), torch.ones(5))


def test_given_pairs_buffer():
    pairs = torch.tensor([[3, 0], [1, 2], [2, 4]])
    module = AFMPooling(8, 4, pairs=pairs)
    e = torch.randn(3, 5, 8)
    torch.testing.assert_close(module(e), reference(e, module.weight, module.bias, module.projection,
                                                    pairs))
    assert "pairs" not in module.state_dict() and "pairs=3" in repr(module)


@pytest.mark.parametrize("fields", [2, 7, 23])
def test_fm_mode_all_pairs_is_the_naive_sum(fields):
    module = AFMPooling(8, 4, use_attention=False)
    assert not list(module.parameters())
    e = torch.randn(4, fields, 8, dtype=torch.float64)
    pairs = [(i, j) for i in range(fields) for j in range(i + 1, fields)]
    pooled, a = module(e, return_attention=True)
    torch.testing.assert_close(pooled, naive_pairwise_sum(e, pairs))
    assert a.shape == (4, len(pairs)) and bool((a == 1).all())


def test_fm_mode_given_pairs_is_the_naive_sum():
    pairs = [(5, 2), (0, 1), (5, 2), (3, 4)]
    module = AFMPooling(8, 4, pairs=torch.tensor(pairs), use_attention=False)
    e = torch.randn(4, 6, 8, dtype=torch.float64, requires_grad=True)
    pooled = module(e)
    torch.testing.assert_close(pooled, naive_pairwise_sum(e, pairs))
    pooled.sum().backward()
    with pytest.raises(ValueError, match="no attention weights"):
        module.l2_penalty()


def test_kernel_path_matches_reference_path():
    module = AFMPooling(16, 16).to(KERNEL_DEVICE)
    e = torch.randn(9, 7, 16, device=KERNEL_DEVICE, requires_grad=True)
    outs = {}
    for backend in ("kernel", "reference"):
        module.zero_grad()
        e.grad = None
        with use_backend(backend):
            pooled, a = module(e, return_attention=True)
        (pooled.square().sum() + a[:, :3].sum()).backward()
        outs[backend] = [pooled, a, e.grad, module.weight.grad, module.bias.grad, module.projection.grad]
    for name, x, y in zip(("pooled", "a", "de", "dW", "db", "dh"), outs["kernel"], outs["reference"]):
        assert_rel_close(x, y, torch.float32, name)


def test_state_dict_round_trip_and_l2():
    module = AFMPooling(8, 4)
    other = AFMPooling(8, 4)
    other.load_state_dict(module.state_dict())
    e = torch.randn(3, 4, 8)
    torch.testing.assert_close(other(e), module(e))
    torch.testing.assert_close(module.l2_penalty(), (module.weight ** 2).sum())


def test_bad_arguments():
    with pytest.raises(ValueError, match="must be >= 1"):
        AFMPooling(0, 4)
    with pytest.raises(ValueError, match=r"\[P, 2\]"):
        AFMPooling(8, 4, pairs=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"fields 0\.\.2"):
        AFMPooling(8, 4, pairs=torch.tensor([[0, 3]]), use_attention=False)(torch.randn(2, 3, 8))
