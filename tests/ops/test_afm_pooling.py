"""afm_pooling: fused Triton kernel vs the float64 reference (pooled, attention and every
gradient), the reference vs a naive double loop, saved-tensor memory, opcheck, torch.compile,
error paths."""
import importlib

import pytest
import torch

from fastint import use_backend
from fastint.kernels import afm_pooling as kernels
from fastint.kernels._common import Target
from fastint.ops.afm_pooling import afm_pooling
from fastint.reference.afm_pooling import afm_pooling as reference
from tests.helpers import (KERNEL_DEVICE, KERNEL_DTYPES, assert_compiled_grads_match,
                           check_kernel_against_reference, outputs_and_grads, randn)

op_module = importlib.import_module("fastint.ops.afm_pooling")


def make_inputs(batch, fields, dim, att, dtype=torch.float32, device="cpu"):
    """Leaves (e, weight, bias, projection): unit-scale e and Xavier-scale weight give scores of
    order one."""
    def leaf(*shape, scale):
        return randn(*shape, dtype=dtype, device=device, scale=scale, requires_grad=True)
    return (leaf(batch, fields, dim, scale=1.0), leaf(dim, att, scale=dim ** -0.5),
            leaf(att, scale=0.3), leaf(att, scale=1.0))


def random_pairs(fields, count, device="cpu"):
    """``count`` distinct pairs with ``i != j`` in random order and orientation (e.g. (5, 2))."""
    i, j = torch.triu_indices(fields, fields, 1)
    pick = torch.randperm(i.numel())[:count]
    flip = torch.rand(count) < 0.5
    first, second = torch.where(flip, j[pick], i[pick]), torch.where(flip, i[pick], j[pick])
    return torch.stack([first, second], 1).to(device)


NAMES = ("e", "weight", "bias", "projection")


def with_pairs(fn, pairs, return_attention=True):
    """``fn(e, weight, bias, projection)`` with the given pairs (on the inputs' device)."""
    def call(*tensors):
        given = None if pairs is None else pairs.to(tensors[0].device)
        return fn(*tensors, given, return_attention=return_attention)
    return call


def check_against_reference(inputs, pairs, dtype, use_a=True):
    batch, fields, dim = inputs[0].shape
    num_pairs = fields * (fields - 1) // 2 if pairs is None else pairs.shape[0]
    upstream = (torch.randn(batch, dim), torch.randn(batch, num_pairs) if use_a else None)
    # softmax over one pair is constant: the attention weights get (rounding-)zero gradient
    zero = NAMES[1:] if num_pairs == 1 else ()
    _, a = check_kernel_against_reference(with_pairs(afm_pooling, pairs), with_pairs(reference, pairs),
                                          inputs, upstream, dtype, ("pooled", "a"), NAMES, zero)
    assert a.shape == (batch, num_pairs)


# (batch, M, k, t): batches not multiples of the per-program chunk; every M, k and t appears
SHAPES = [
    (9, 2, 8, 16),
    (13, 3, 16, 8),
    (11, 7, 40, 32),
    (7, 23, 16, 16),
    (6, 39, 8, 32),
    (5, 23, 40, 8),
    (5, 7, 16, 40),
]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-M{}-k{}-t{}".format(*s))
def test_kernel_matches_reference(shape, dtype):
    inputs = make_inputs(*shape, dtype=dtype, device=KERNEL_DEVICE)
    check_against_reference(inputs, None, dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("fields, count", [(7, 9), (39, 300), (3, 1)])
def test_given_pairs(fields, count, dtype):
    inputs = make_inputs(10, fields, 16, 16, dtype=dtype, device=KERNEL_DEVICE)
    pairs = random_pairs(fields, count)
    assert count < 2 or (pairs[:, 0] > pairs[:, 1]).any()
    check_against_reference(inputs, pairs.to(torch.int32), dtype)


def test_out_of_order_pairs_and_repeats():
    """Explicit (5, 2)-style pairs and a repeated pair: both count like any other pair."""
    inputs = make_inputs(6, 6, 16, 8, device=KERNEL_DEVICE)
    pairs = torch.tensor([[5, 2], [0, 1], [3, 1], [5, 2], [4, 0]])
    check_against_reference(inputs, pairs, torch.float32)


def test_pooled_only_gradient():
    """Attention not returned: its gradient reaches the kernel as None."""
    inputs = make_inputs(9, 7, 16, 16, device=KERNEL_DEVICE)
    check_against_reference(inputs, None, torch.float32, use_a=False)
    pooled, = check_kernel_against_reference(with_pairs(afm_pooling, None, False),
                                             with_pairs(reference, None, False), inputs,
                                             (torch.randn(9, 16),), torch.float32, ("pooled",), NAMES)
    assert pooled.shape == (9, 16)


def test_attention_only_gradient():
    inputs = make_inputs(9, 7, 16, 16, device=KERNEL_DEVICE)
    check_kernel_against_reference(with_pairs(afm_pooling, None), with_pairs(reference, None), inputs,
                                   (None, torch.randn(9, 21)), torch.float32, ("pooled", "a"), NAMES)


def test_non_contiguous_inputs():
    e, w, b, h = make_inputs(8, 7, 16, 16, device=KERNEL_DEVICE)
    e_t = e.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    w_t = w.detach().T.contiguous().T.requires_grad_()
    assert not e_t.is_contiguous() and not w_t.is_contiguous()
    check_against_reference([e_t, w_t, b, h], torch.tensor([[1, 0], [2, 6], [3, 4]]).T.contiguous().T,
                            torch.float32)


def test_saved_tensors_scale_with_batch_fields_dim_not_pairs():
    """What autograd keeps is e, the weights, pairs, pooled and O(B) statistics: never B*P*k."""
    batch, fields, dim, att = 16, 39, 16, 16
    inputs = make_inputs(batch, fields, dim, att, device=KERNEL_DEVICE)
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with use_backend("kernel"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        pooled = afm_pooling(*inputs)
    numel = sum(t.numel() for t in saved)
    num_pairs = fields * (fields - 1) // 2
    weights = dim * att + 2 * att
    bound = batch * fields * dim + batch * (dim + 1) + weights + 2 * num_pairs
    assert numel <= bound, f"saved {numel} elements > {bound}"
    assert numel < batch * num_pairs * dim / 10  # the reference would save > B * P * k
    pooled.sum().backward()
    assert inputs[0].grad is not None


def test_backward_op_without_upstream_gradients():
    e, w, b, h = (x.detach() for x in make_inputs(5, 4, 8, 8))
    pairs = torch.tensor([[0, 1], [2, 3]])
    pooled, a, stats = op_module._forward(e, w, b, h, pairs, False)
    assert a.shape == (0,)                      # absent: the attention was not requested
    grads = op_module._backward(None, None, e, w, b, h, pairs, a, stats)
    for g, x in zip(grads, (e, w, b, h)):
        assert g.shape == x.shape and not g.any()


def test_empty_batch():
    e, w, b, h = make_inputs(0, 5, 16, 8, device=KERNEL_DEVICE)
    with use_backend("kernel"):
        pooled, a = afm_pooling(e, w, b, h, return_attention=True)
        assert pooled.shape == (0, 16) and a.shape == (0, 10)
        (pooled.sum() + a.sum()).backward()
    assert e.grad.shape == e.shape and not w.grad.any()


def test_large_fields_multiple_tiles():
    """M = 100 fields: 4950 pairs, many pair tiles per sample, M_PAD = 128."""
    inputs = make_inputs(3, 100, 16, 16, device=KERNEL_DEVICE)
    check_against_reference(inputs, None, torch.float32)


def naive(e, w, b, h):
    """Sample by sample, pair by pair (i < j, row-major), straight from the paper."""
    batch, fields, dim = e.shape
    pooled = torch.zeros(batch, dim, dtype=e.dtype)
    attention = []
    for n in range(batch):
        products = [e[n, i] * e[n, j] for i in range(fields) for j in range(i + 1, fields)]
        scores = torch.stack([h @ torch.relu(w.T @ p + b) for p in products])
        a = torch.exp(scores - scores.max())
        a = a / a.sum()
        pooled[n] = sum(a[q] * p for q, p in enumerate(products))
        attention.append(a)
    return pooled, torch.stack(attention)


def test_reference_matches_naive_loops():
    inputs = [x.detach().double() for x in make_inputs(3, 5, 4, 6)]
    for out, want in zip(reference(*inputs, return_attention=True), naive(*inputs)):
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)


def test_public_op_runs_reference_on_cpu_by_default():
    inputs = make_inputs(4, 3, 8, 8)
    with use_backend("auto"):
        out = afm_pooling(*inputs, return_attention=True)
    for o, r in zip(out, reference(*inputs, return_attention=True)):
        torch.testing.assert_close(o, r)


@pytest.mark.parametrize("return_attention", [True, False])
def test_opcheck(return_attention):
    e, w, b, h = (x.detach() for x in make_inputs(11, 7, 16, 8, device=KERNEL_DEVICE))
    pairs = random_pairs(7, 12, KERNEL_DEVICE)
    torch.library.opcheck(op_module._forward, (e, w, b, h, pairs, return_attention))
    _, a, stats = op_module._forward(e, w, b, h, pairs, return_attention)
    grad_pooled = torch.randn(11, 16, device=KERNEL_DEVICE)
    grad_a = torch.randn(11, 12, device=KERNEL_DEVICE) if return_attention else None
    torch.library.opcheck(op_module._backward, (grad_pooled, grad_a, e, w, b, h, pairs, a, stats))


@pytest.mark.parametrize("given_pairs", [False, True], ids=["all-pairs", "given-pairs"])
def test_torch_compile_fullgraph_forward_backward(given_pairs):
    inputs = make_inputs(13, 7, 16, 16, device=KERNEL_DEVICE)
    pairs = random_pairs(7, 10, KERNEL_DEVICE) if given_pairs else None
    grad_pooled = torch.randn(13, 16, device=KERNEL_DEVICE)

    def step(e, w, b, h):
        pooled, a = afm_pooling(e, w, b, h, pairs, return_attention=True)
        return (pooled * grad_pooled).sum() + a[:, 0].sum()

    assert_compiled_grads_match(step, inputs)


def args(**over):
    """Valid (e, w, b, h, pairs) with some replaced."""
    base = dict(e=torch.randn(4, 5, 8), weight=torch.randn(8, 6), bias=torch.randn(6),
                projection=torch.randn(6), pairs=None)
    base.update(over)
    return base


@pytest.mark.parametrize("kwargs, error, match", [
    (args(e=torch.randn(4, 5, 7)), ValueError, r"e must have shape \[\*, \*, 8\]"),
    (args(e=torch.randn(4, 8)), ValueError, "e must have 3 dimensions"),
    (args(weight=torch.randn(8)), ValueError, "weight must have 2 dimensions"),
    (args(bias=torch.randn(5)), ValueError, r"bias must have shape \[6\]"),
    (args(projection=torch.randn(6, 1)), ValueError, r"projection must have shape \[6\]"),
    (args(e=torch.randn(4, 1, 8)), ValueError, "at least 2 fields"),
    (args(pairs=torch.tensor([[0, 5]])), ValueError, r"fields 0\.\.4"),
    (args(pairs=torch.tensor([[-1, 2]])), ValueError, r"fields 0\.\.4"),
    (args(pairs=torch.tensor([[1, 2], [3, 3]])), ValueError, "two different fields"),
    (args(pairs=torch.tensor([[0.0, 1.0]])), TypeError, "pairs must have dtype"),
    (args(pairs=torch.tensor([0, 1])), ValueError, r"pairs must have shape \[\*, 2\]"),
    (args(pairs=torch.zeros(0, 2, dtype=torch.long)), ValueError, "at least one pair"),
    (args(weight=torch.randn(8, 6, dtype=torch.float16)), TypeError, "share one dtype"),
    (args(e=torch.randint(0, 3, (4, 5, 8))), TypeError, "e must have dtype"),
    (args(projection=torch.randn(6, device="meta")), ValueError, "same device"),
    (args(pairs=torch.tensor([[0, 1]], device="meta")), ValueError, "same device"),
])
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        afm_pooling(**kwargs)


def test_backward_is_deterministic():
    inputs = make_inputs(23, 7, 16, 16, device=KERNEL_DEVICE)
    upstream = torch.randn(23, 16, device=KERNEL_DEVICE), torch.randn(23, 21, device=KERNEL_DEVICE)
    with use_backend("kernel"):
        first, second = (outputs_and_grads(with_pairs(afm_pooling, None), inputs, upstream)[1]
                         for _ in range(2))
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_gradcheck_float64_reference_path():
    """float64 runs the reference through the public op, so torch.autograd.gradcheck applies."""
    inputs = make_inputs(3, 4, 5, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(with_pairs(afm_pooling, torch.tensor([[0, 1], [3, 1], [2, 0]])), inputs)


def test_kernel_backend_rejects_float64():
    with use_backend("kernel"), pytest.raises(TypeError, match="fused kernels take"):
        afm_pooling(**{k: (v.double() if v is not None else None) for k, v in args().items()})


H100 = Target(interpreter=False, sm_count=132, capability=(9, 0))


@pytest.mark.parametrize("fields, dim, parts, pair_block, num_warps", [
    (39, 256, 2, 16, 8),   # de [64, 256] in two column parts: one part spilled (static gate)
    (10, 256, 2, 16, 8),   # [16, 256] spilled too (16-40 B)
    (39, 64, 1, 16, 8),
    (39, 16, 1, 16, 4),
])
def test_activation_launch_config_on_gpu(fields, dim, parts, pair_block, num_warps):
    pairs = fields * (fields - 1) // 2
    cfg = kernels.launch_config("bwd_activations", 65536, fields, dim, dim, pairs, torch.float32, H100)
    assert cfg.meta["K_PAD"] // cfg.meta["K_PART"] == parts and cfg.grid[0] % parts == 0
    assert (cfg.meta["PAIR_BLOCK"], cfg.num_warps, cfg.num_stages) == (pair_block, num_warps, 1)


def test_parameter_launch_config_on_gpu():
    """Hidden-unit chunks x sample groups, about 4 programs per SM."""
    cfg = kernels.launch_config("bwd_parameters", 65536, 39, 256, 256, 741, torch.float32, H100)
    assert cfg.meta["T_BLOCK"] == 32 and cfg.grid == (8 * (4 * 132 // 8),)


def test_launch_config_rejects_unknown_kernel():
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernels.launch_config("bwd", 8, 4, 16, 16, 6, torch.float32, H100)
