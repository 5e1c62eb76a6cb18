"""hierarchical_aggregation: fused Triton kernel vs the float64 reference (outputs and every
gradient), the reference vs a naive per-sample loop, opcheck, torch.compile, error paths."""
import importlib

import pytest
import torch

from fastint import use_backend
from fastint.kernels import hierarchical_aggregation as kernels
from fastint.kernels._common import Target
from fastint.ops.hierarchical_aggregation import hierarchical_aggregation
from fastint.reference.hierarchical_aggregation import hierarchical_aggregation as reference
from tests.helpers import (KERNEL_DEVICE, KERNEL_DTYPES, assert_compiled_grads_match,
                           check_kernel_against_reference, outputs_and_grads, randn)

# the module (fastint.ops may re-export the function under the same name)
op_module = importlib.import_module("fastint.ops.hierarchical_aggregation")


def make_inputs(batch, fields, dim, att, orders, dtype=torch.float32, device="cpu"):
    """Well-conditioned leaves (x1, weight, bias, context): |x1| ~ 0.5 keeps ``1 + sum u`` moderate up to K=8
    (with unit-scale x1 and K=8 even the fp32 eager reference is off by 5e-5)."""
    def leaf(*shape, scale):
        return randn(*shape, dtype=dtype, device=device, scale=scale, requires_grad=True)
    return (leaf(batch, fields, dim, scale=0.5), leaf(orders, dim, att, scale=dim ** -0.5),
            leaf(orders, att, scale=0.1), leaf(orders, att, scale=0.5))


NAMES = ("x1", "weight", "bias", "context")


def with_attention(fn):
    return lambda *tensors: fn(*tensors, return_attention=True)


def check_against_reference(inputs, grad_u, grad_alpha, dtype):
    # softmax over one field is constant: the attention weights get exactly zero gradient
    zero = NAMES[1:] if inputs[0].shape[1] == 1 else ()
    check_kernel_against_reference(with_attention(hierarchical_aggregation), with_attention(reference),
                                   inputs, (grad_u, grad_alpha), dtype, ("U", "alpha"), NAMES, zero)


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


def test_without_attention_output():
    """The default call returns U only: alpha is not stored, its gradient is None."""
    inputs = make_inputs(21, 7, 16, 16, 3, device=KERNEL_DEVICE)
    u, = check_kernel_against_reference(hierarchical_aggregation, reference, inputs,
                                        (torch.randn(21, 3, 16),), torch.float32, ("U",), NAMES)
    assert isinstance(u, torch.Tensor) and u.shape == (21, 3, 16)
    _, alpha = op_module._forward(*(t.detach() for t in inputs), False)
    assert alpha.shape == (0,)


def test_backward_op_without_upstream_gradients():
    inputs = [t.detach() for t in make_inputs(5, 3, 8, 8, 2)]
    dx1, dw, db, dc = op_module._backward(None, None, *inputs)
    for g, t in zip((dx1, dw, db, dc), inputs):
        assert g.shape == t.shape and not g.any()


def test_empty_batch():
    x1, w, b, c = make_inputs(0, 5, 16, 8, 3, device=KERNEL_DEVICE)
    with use_backend("kernel"):
        u, alpha = hierarchical_aggregation(x1, w, b, c, return_attention=True)
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
    for out, want in zip(reference(*inputs, return_attention=True), naive(*inputs)):
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_public_op_runs_reference_on_cpu_by_default():
    inputs = make_inputs(4, 3, 8, 8, 2)
    with use_backend("auto"):
        out = hierarchical_aggregation(*inputs, return_attention=True)
    for o, r in zip(out, reference(*inputs, return_attention=True)):
        torch.testing.assert_close(o, r)


def test_opcheck():
    inputs = make_inputs(3, 7, 16, 8, 3, device=KERNEL_DEVICE)
    torch.library.opcheck(op_module._forward, (*inputs, True))
    torch.library.opcheck(op_module._forward, (*inputs, False))
    detached = [t.detach() for t in inputs]
    grad_u = torch.randn(3, 3, 16, device=KERNEL_DEVICE)
    grad_alpha = torch.randn(3, 3, 7, device=KERNEL_DEVICE)
    torch.library.opcheck(op_module._backward, (grad_u, grad_alpha, *detached))
    torch.library.opcheck(op_module._backward, (grad_u, None, *detached))


@pytest.mark.parametrize("use_alpha", [True, False], ids=["u+alpha", "u-only"])
def test_torch_compile_fullgraph_forward_backward(use_alpha):
    inputs = make_inputs(13, 7, 16, 16, 3, device=KERNEL_DEVICE)
    grad_u, grad_alpha = torch.randn(13, 3, 16), torch.randn(13, 3, 7)

    def step(x1, w, b, c):
        u, alpha = hierarchical_aggregation(x1, w, b, c, return_attention=True)
        loss = (u * grad_u.to(u.device)).sum()
        return loss + (alpha * grad_alpha.to(u.device)).sum() if use_alpha else loss

    assert_compiled_grads_match(step, inputs)


def shapes(**over):
    """Valid (x1, w, b, c) with some tensors replaced."""
    base = dict(x1=torch.randn(4, 5, 8), weight=torch.randn(3, 8, 6), bias=torch.randn(3, 6),
                context=torch.randn(3, 6))
    base.update(over)
    return base


@pytest.mark.parametrize("args, error, match", [
    (shapes(x1=torch.randn(4, 5, 7)), ValueError, r"x1 must have shape \[\*, \*, 8\]"),
    (shapes(x1=torch.randn(4, 8)), ValueError, "x1 must have 3 dimensions"),
    (shapes(weight=torch.randn(8, 6)), ValueError, "weight must have 3 dimensions"),
    (shapes(bias=torch.randn(3, 5)), ValueError, r"bias must have shape \[3, 6\]"),
    (shapes(context=torch.randn(2, 6)), ValueError, r"context must have shape \[3, 6\]"),
    (shapes(weight=torch.randn(0, 8, 6), bias=torch.randn(0, 6), context=torch.randn(0, 6)), ValueError,
     "at least one order"),
    (shapes(x1=torch.randn(4, 0, 8)), ValueError, "at least one field"),
    (shapes(weight=torch.randn(3, 8, 6, dtype=torch.float16)), TypeError, "share one dtype"),
    (shapes(x1=torch.randint(0, 3, (4, 5, 8))), TypeError, "x1 must have dtype"),
    (shapes(context=torch.randn(3, 6, device="meta")), ValueError, "same device"),
])
def test_errors(args, error, match):
    with pytest.raises(error, match=match):
        hierarchical_aggregation(**args)


def test_backward_is_deterministic():
    """Weight gradients are per-program partials summed by torch: bit-identical across runs."""
    inputs = make_inputs(37, 7, 16, 16, 3, device=KERNEL_DEVICE)
    grads = (torch.randn(37, 3, 16), torch.randn(37, 3, 7))
    with use_backend("kernel"):
        first, second = (outputs_and_grads(with_attention(hierarchical_aggregation), inputs, grads)[1]
                         for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_gradcheck_float64_reference_path():
    """float64 runs the reference through the public op, so torch.autograd.gradcheck applies."""
    assert torch.autograd.gradcheck(with_attention(hierarchical_aggregation),
                                    make_inputs(3, 4, 5, 6, 2, dtype=torch.float64))


def test_kernel_backend_rejects_float64():
    with use_backend("kernel"), pytest.raises(TypeError, match="fused kernels take"):
        hierarchical_aggregation(**{k: v.double() for k, v in shapes().items()})


H100 = Target(interpreter=False, sm_count=132, capability=(9, 0))


@pytest.mark.parametrize("kernel, fields, dim, att, samples, field_block", [
    ("fwd", 39, 16, 16, 1, 32),              # 32 rows: one sample, fields in chunks of 32
    ("fwd", 10, 40, 64, 2, 16),              # two samples of M_PAD = 16 fields
    ("bwd_activations", 39, 40, 64, 1, 16),  # 16 rows: 32 spilled at d = 40
    ("bwd_activations", 10, 16, 16, 1, 16),
])
def test_launch_config_on_gpu(kernel, fields, dim, att, samples, field_block):
    """The tiles the static gate measured without spills (see ``_ROWS``)."""
    cfg = kernels.launch_config(kernel, 65536, fields, dim, att, 3, torch.float16, H100)
    assert (cfg.meta["SAMPLES"], cfg.meta["FIELD_BLOCK"], cfg.meta["A_BLOCK"]) == (samples, field_block, 16)
    assert cfg.grid == (65536 // samples,)
    assert (cfg.num_warps, cfg.maxnreg, cfg.num_stages) == (4, 255, 1)


def test_parameter_launch_config_on_gpu():
    """Orders x attention chunks x about 4 programs per SM, each owning one slot per order."""
    cfg = kernels.launch_config("bwd_parameters", 65536, 39, 40, 64, 3, torch.float32, H100)
    assert (cfg.meta["ROW_BLOCK"], cfg.meta["A_BLOCK"]) == (32, 16)
    assert cfg.grid == (3 * 4 * (4 * 132 // 12),)


def test_launch_config_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernels.launch_config("bwd", 8, 4, 16, 16, 2, torch.float32, H100)
