"""HierarchicalAttention: parameters and their initialisation, forward = the op, L2 penalty,
kernel path = reference path, state_dict round trip."""
import math

import pytest
import torch

from fastint import use_backend
from fastint.nn.hierarchical import HierarchicalAttention
from fastint.reference.hierarchical_aggregation import hierarchical_aggregation as reference
from tests.helpers import KERNEL_DEVICE, assert_rel_close


def test_parameters_and_initialisation():
    module = HierarchicalAttention(16, 8, num_orders=4)
    assert module.weight.shape == (4, 16, 8)
    assert module.bias.shape == module.context.shape == (4, 8)
    bound = math.sqrt(6 / (16 + 8))  # Xavier-uniform per order: fan_in d, fan_out a
    assert module.weight.abs().max() <= bound and module.weight.abs().max() > 0.8 * bound
    assert not module.bias.any()
    assert 0 < module.context.std() < 0.05
    assert "num_orders=4" in repr(module)


def test_forward_is_the_op():
    module = HierarchicalAttention(8, 16, num_orders=3)
    x1 = torch.randn(5, 7, 8)
    u, alpha = module(x1, return_attention=True)
    u_ref, alpha_ref = reference(x1, module.weight, module.bias, module.context, return_attention=True)
    torch.testing.assert_close(u, u_ref)
    torch.testing.assert_close(alpha, alpha_ref)
    assert u.shape == (5, 3, 8) and alpha.shape == (5, 3, 7)
    torch.testing.assert_close(alpha.sum(-1), torch.ones(5, 3))


def test_l2_penalty():
    module = HierarchicalAttention(8, 4, num_orders=2)
    penalty = module.l2_penalty()
    torch.testing.assert_close(penalty, sum((w ** 2).sum() for w in module.weight))
    penalty.backward()
    torch.testing.assert_close(module.weight.grad, 2 * module.weight.detach())
    assert module.bias.grad is None and module.context.grad is None


def test_kernel_path_matches_reference_path():
    module = HierarchicalAttention(16, 16, num_orders=3).to(KERNEL_DEVICE)
    with torch.no_grad():
        module.bias.normal_(std=0.1)
        module.context.normal_(std=0.5)  # spread the attention so the gradients are not tiny
    x1 = (0.5 * torch.randn(19, 10, 16, device=KERNEL_DEVICE)).requires_grad_()
    grad_u = torch.randn(19, 3, 16, device=KERNEL_DEVICE)
    grad_alpha = torch.randn(19, 3, 10, device=KERNEL_DEVICE)
    results = {}
    for backend in ("kernel", "reference"):
        module.zero_grad()
        x1.grad = None
        with use_backend(backend):
            outputs = module(x1, return_attention=True)
        torch.autograd.backward(outputs, (grad_u, grad_alpha))
        results[backend] = [*outputs, x1.grad.clone(), *(p.grad.clone() for p in module.parameters())]
    names = ("U", "alpha", "dx1", "dW", "db", "dc")
    for name, got, want in zip(names, results["kernel"], results["reference"]):
        assert_rel_close(got, want, torch.float32, name)


def test_state_dict_round_trip():
    module = HierarchicalAttention(8, 4, num_orders=2)
    clone = HierarchicalAttention(8, 4, num_orders=2)
    clone.load_state_dict(module.state_dict())
    x1 = torch.randn(3, 5, 8)
    for a, b in zip(module(x1, return_attention=True), clone(x1, return_attention=True)):
        torch.testing.assert_close(a, b)
    assert set(module.state_dict()) == {"weight", "bias", "context"}


@pytest.mark.parametrize("args", [(0, 4, 2), (8, 0, 2), (8, 4, 0)])
def test_invalid_sizes(args):
    with pytest.raises(ValueError, match="must all be >= 1"):
        HierarchicalAttention(*args[:2], num_orders=args[2])
