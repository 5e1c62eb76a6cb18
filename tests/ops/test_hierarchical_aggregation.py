"""hierarchical_aggregation: fused Triton kernel vs the float64 reference (outputs and every
gradient), the reference vs a naive per-sample loop, opcheck, torch.compile, error paths."""
import importlib

import pytest
import torch

from fastint import use_backend
from fastint.ops.hierarchical_aggregation import hierarchical_aggregation
from fastint.reference.hierarchical_aggregation import hierarchical_aggregation as reference
from tests.helpers import KERNEL_DEVICE, KERNEL_DTYPES, as_reference, assert_compiled_grads_match, assert_rel_close, randn

# the module (fastint.ops may re-export the function under the same name)
op_module = importlib.import_module("fastint.ops.hierarchical_aggregation")


def make_inputs(batch, fields, dim, att, orders, dtype=torch.float32, device="cpu"):
    """Well-conditioned leaves (x1, w, b, c): |x1| ~ 0.5 keeps ``1 + sum u`` moderate up to K=8
    (with unit-scale x1 and K=8 even the fp32 eager reference is off by 5e-5)."""
    def leaf(*shape, scale):
        return randn(*shape, dtype=dtype, device=device, scale=scale, requires_grad=True)
    return (leaf(batch, fields, dim, scale=0.5), leaf(orders, dim, att, scale=dim ** -0.5),
            leaf(orders, att, scale=0.1), leaf(orders, att, scale=0.5))


def run(inputs, grad_u, grad_alpha):
    """Outputs and the gradients of ``<U, grad_u> + <alpha, grad_alpha>`` (either may be None)."""
    u, alpha = hierarchical_aggregation(*inputs) if inputs[0].dtype != torch.float64 else reference(*inputs)
    loss = sum((out.double() * g.to(out.device, torch.float64)).sum()
               for out, g in ((u, grad_u), (alpha, grad_alpha)) if g is not None)
    grads = torch.autograd.grad(loss, inputs)
    return (u, alpha), grads


def check_against_reference(inputs, grad_u, grad_alpha, dtype):
    with use_backend("kernel"):
        (u, alpha), grads = run(inputs, grad_u, grad_alpha)
    (u_ref, alpha_ref), grads_ref = run([as_reference(t) for t in inputs], grad_u, grad_alpha)
    assert u.dtype == alpha.dtype == dtype
    assert_rel_close(u, u_ref, dtype, "U")
    assert_rel_close(alpha, alpha_ref, dtype, "alpha")
    single_field = inputs[0].shape[1] == 1
    for name, g, g_ref in zip(("x1", "w", "b", "c"), grads, grads_ref):
        assert g.dtype == dtype, name
        if single_field and name != "x1":
            # softmax over one field is constant: the attention weights get exactly zero gradient
            assert torch.equal(g.cpu(), torch.zeros_like(g.cpu())), name
        else:
            assert_rel_close(g, g_ref, dtype, f"d{name}")


# (batch, M, d, a, K): batches not multiples of SAMPLES; every M, d, a and K value appears
SHAPES = [
    (37, 1, 16, 16, 3),
    (37, 2, 8, 32, 1),
    (37, 7, 16, 16, 3),
    (50, 23, 40, 8, 8),
    (37, 39, 16, 16, 3),
    (23, 39, 8, 32, 8),
    (9, 23, 40, 16, 1),
]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-M{}-d{}-a{}-K{}".format(*s))
def test_kernel_matches_reference(shape, dtype):
    batch, fields, dim, att, orders = shape
    inputs = make_inputs(*shape, dtype=dtype, device=KERNEL_DEVICE)
    grad_u, grad_alpha = torch.randn(batch, orders, dim), torch.randn(batch, orders, fields)
    check_against_reference(inputs, grad_u, grad_alpha, dtype)


def test_non_contiguous_inputs():
    batch, fields, dim, att, orders = 19, 7, 16, 8, 2
    x1, w, b, c = make_inputs(batch, fields, dim, att, orders, device=KERNEL_DEVICE)
    x1_t = x1.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    w_t = w.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    assert not x1_t.is_contiguous() and not w_t.is_contiguous()
    check_against_reference([x1_t, w_t, b, c], torch.randn(batch, orders, dim),
                            torch.randn(batch, orders, fields), torch.float32)


@pytest.mark.parametrize("used", ["u", "alpha"])
def test_gradient_through_one_output(used):
    """Only one output feeds the loss: the other output's gradient reaches the kernel as None."""
    batch, fields, dim, att, orders = 21, 7, 16, 16, 3
    inputs = make_inputs(batch, fields, dim, att, orders, device=KERNEL_DEVICE)
    grad_u = torch.randn(batch, orders, dim) if used == "u" else None
    grad_alpha = torch.randn(batch, orders, fields) if used == "alpha" else None
    check_against_reference(inputs, grad_u, grad_alpha, torch.float32)


def test_backward_op_without_upstream_gradients():
    inputs = [t.detach() for t in make_inputs(5, 3, 8, 8, 2)]
    dx1, dw, db, dc = op_module._backward(None, None, *inputs)
    for g, t in zip((dx1, dw, db, dc), inputs):
        assert g.shape == t.shape and not g.any()


def test_empty_batch():
    x1, w, b, c = make_inputs(0, 5, 16, 8, 3, device=KERNEL_DEVICE)
    with use_backend("kernel"):
        u, alpha = hierarchical_aggregation(x1, w, b, c)
        assert u.shape == (0, 3, 16) and alpha.shape == (0, 3, 5)
        (u.sum() + alpha.sum()).backward()
    assert x1.grad.shape == x1.shape and not w.grad.any()


def naive(x1, w, b, c):
    """Sample by sample, field by field, straight from the paper's equations."""
    batch, fields, _ = x1.shape
    us = torch.zeros(batch, w.shape[0], x1.shape[2], dtype=x1.dtype)
    alphas = torch.zeros(batch, w.shape[0], fields, dtype=x1.dtype)
    for n in range(batch):
        x = x1[n].clone()
        for i in range(w.shape[0]):
            scores = torch.stack([c[i] @ torch.relu(w[i].T @ x[j] + b[i]) for j in range(fields)])
            alpha = torch.exp(scores - scores.max())
            alpha = alpha / alpha.sum()
            u = sum(alpha[j] * x[j] for j in range(fields))
            x = torch.stack([x1[n, j] * u + x[j] for j in range(fields)])
            us[n, i], alphas[n, i] = u, alpha
    return us, alphas


def test_reference_matches_naive_loops():
    inputs = [t.detach().double() for t in make_inputs(3, 5, 4, 6, 3)]
    for out, want in zip(reference(*inputs), naive(*inputs)):
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_public_op_runs_reference_on_cpu_by_default():
    inputs = make_inputs(4, 3, 8, 8, 2)
    with use_backend("auto"):
        out = hierarchical_aggregation(*inputs)
    for o, r in zip(out, reference(*inputs)):
        torch.testing.assert_close(o, r)


def test_opcheck():
    inputs = make_inputs(11, 7, 16, 8, 3, device=KERNEL_DEVICE)
    torch.library.opcheck(op_module._forward, tuple(inputs))
    detached = [t.detach() for t in inputs]
    grad_u = torch.randn(11, 3, 16, device=KERNEL_DEVICE)
    grad_alpha = torch.randn(11, 3, 7, device=KERNEL_DEVICE)
    torch.library.opcheck(op_module._backward, (grad_u, grad_alpha, *detached))
    torch.library.opcheck(op_module._backward, (grad_u, None, *detached))


@pytest.mark.parametrize("use_alpha", [True, False], ids=["u+alpha", "u-only"])
def test_torch_compile_fullgraph_forward_backward(use_alpha):
    inputs = make_inputs(13, 7, 16, 16, 3, device=KERNEL_DEVICE)
    grad_u, grad_alpha = torch.randn(13, 3, 16), torch.randn(13, 3, 7)

    def step(x1, w, b, c):
        u, alpha = hierarchical_aggregation(x1, w, b, c)
        loss = (u * grad_u.to(u.device)).sum()
        return loss + (alpha * grad_alpha.to(u.device)).sum() if use_alpha else loss

    assert_compiled_grads_match(step, inputs)


def shapes(**over):
    """Valid (x1, w, b, c) with some tensors replaced."""
    base = dict(x1=torch.randn(4, 5, 8), w=torch.randn(3, 8, 6), b=torch.randn(3, 6), c=torch.randn(3, 6))
    base.update(over)
    return base


@pytest.mark.parametrize("args, error, match", [
    (shapes(x1=torch.randn(4, 5, 7)), ValueError, r"x1 must have shape \[\*, \*, 8\]"),
    (shapes(x1=torch.randn(4, 8)), ValueError, "x1 must have 3 dimensions"),
    (shapes(w=torch.randn(8, 6)), ValueError, "w must have 3 dimensions"),
    (shapes(b=torch.randn(3, 5)), ValueError, r"b must have shape \[3, 6\]"),
    (shapes(c=torch.randn(2, 6)), ValueError, r"c must have shape \[2|3, 6\]"),
    (shapes(w=torch.randn(0, 8, 6), b=torch.randn(0, 6), c=torch.randn(0, 6)), ValueError,
     "at least one order"),
    (shapes(x1=torch.randn(4, 0, 8)), ValueError, "at least one field"),
    (shapes(w=torch.randn(3, 8, 6, dtype=torch.float16)), TypeError, "share one dtype"),
    (shapes(x1=torch.randint(0, 3, (4, 5, 8))), TypeError, "x1 must have dtype"),
    (shapes(c=torch.randn(3, 6, device="meta")), ValueError, "same device"),
])
def test_errors(args, error, match):
    with pytest.raises(error, match=match):
        hierarchical_aggregation(**args)


def test_backward_is_deterministic():
    """Weight gradients are per-program partials summed by torch: bit-identical across runs."""
    inputs = make_inputs(37, 7, 16, 16, 3, device=KERNEL_DEVICE)
    grads = (torch.randn(37, 3, 16), torch.randn(37, 3, 7))
    with use_backend("kernel"):
        first, second = (run(inputs, *grads)[1] for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)
