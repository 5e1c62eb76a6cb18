"""multi_function_interactions: fused Triton kernels vs the float64 reference (Z and every
gradient), the reference vs a naive loop, masks, saved-tensor memory, opcheck, torch.compile,
error paths."""
import importlib
import itertools

import pytest
import torch

from fastint import use_backend
from fastint.ops.multi_function_interactions import multi_function_interactions
from fastint.reference.multi_function_interactions import FUNCTIONS, all_tuples
from fastint.reference.multi_function_interactions import multi_function_interactions as reference
from tests.helpers import (KERNEL_DEVICE, KERNEL_DTYPES, assert_compiled_grads_match,
                           check_kernel_against_reference, outputs_and_grads, randn)

op_module = importlib.import_module("fastint.ops.multi_function_interactions")
PARAMETER_OF = {"kernel": "kappa", "scalar": "s", "outer": "w"}


def make_inputs(batch, tables, fields, dim, tuples, functions=FUNCTIONS, dtype=torch.float32,
                device=KERNEL_DEVICE):
    """Leaves ``[embeddings, kappa, s, w]`` (``None`` for the parameters of absent functions).
    Rows of scale ``dim^(-1/(2p))`` keep a tuple's ``sum_k prod`` of order one."""
    count, order = tuples.shape

    def leaf(*shape, scale=1.0):
        return randn(*shape, dtype=dtype, device=device, scale=scale, requires_grad=True)
    e = leaf(batch, tables, fields, dim, scale=dim ** (-0.5 / order))
    kappa = leaf(count, dim) if "kernel" in functions else None
    s = leaf(count) if "scalar" in functions else None
    w = leaf(order, dim, scale=dim ** (-0.5 / order)) if "outer" in functions else None
    return [e, kappa, s, w]


def call(fn, tuples, functions=FUNCTIONS, mask=None):
    def run(e, kappa, s, w):
        return fn(e, tuples.to(e.device), kappa, s, w, functions=functions,
                  mask=None if mask is None else mask.to(e.device))
    return run


def check_against_reference(inputs, tuples, functions=FUNCTIONS, mask=None, dtype=torch.float32):
    e = inputs[0]
    upstream = (torch.randn(e.shape[0], len(functions), tuples.shape[0]),)
    names = ["embeddings"] + [PARAMETER_OF[f] for f in FUNCTIONS[1:] if f in functions]
    zero = [PARAMETER_OF[f] for f in functions[1:] if mask is not None
            and f in PARAMETER_OF and not mask[functions.index(f)].any()]
    z, = check_kernel_against_reference(call(multi_function_interactions, tuples, functions, mask),
                                        call(reference, tuples, functions, mask), inputs, upstream,
                                        dtype, ("Z",), names, zero)
    if mask is not None:
        assert not z[:, ~mask.to(z.device)].any()          # inactive entries are exactly 0
    return z


def random_mask(functions, count, keep=0.6):
    mask = torch.rand(functions, count) < keep
    mask[0, 0] = True                                    # never all empty
    mask[-1, -1] = False                                 # always a hole
    return mask


# (batch, tables, M, d, order): tables 1 = shared embedding; every M in {2, 7, 23, 39}, d in {8, 20,
# 40} and order 2..4 appears; batches are not multiples of the per-program chunk
SHAPES = [
    (9, 4, 2, 8, 2),
    (7, 4, 7, 20, 2),
    (5, 1, 23, 8, 2),
    (5, 4, 39, 20, 2),
    (6, 4, 7, 40, 3),
    (5, 1, 7, 20, 4),
    (3, 4, 23, 8, 3),
]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-M{}-d{}-p{}".format(*s))
def test_kernel_matches_reference(shape, dtype):
    batch, tables, fields, dim, order = shape
    tuples = all_tuples(fields, order)[:60]
    check_against_reference(make_inputs(batch, tables, fields, dim, tuples, dtype=dtype), tuples, dtype=dtype)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(7, 4, 7, 20, 2), (5, 1, 23, 8, 3), (6, 4, 7, 8, 4)],
                         ids=lambda s: "B{}-T{}-M{}-d{}-p{}".format(*s))
def test_mask_with_holes(shape, dtype):
    batch, tables, fields, dim, order = shape
    tuples = all_tuples(fields, order)[:40]
    mask = random_mask(4, tuples.shape[0])
    check_against_reference(make_inputs(batch, tables, fields, dim, tuples, dtype=dtype), tuples,
                            mask=mask, dtype=dtype)


@pytest.mark.parametrize("functions", [("inner",), ("outer",), ("scalar", "kernel"),
                                       ("outer", "inner", "kernel")], ids="-".join)
@pytest.mark.parametrize("tables", ["shared", "per-function"])
def test_function_subsets_and_orders(functions, tables):
    """Any subset of the functions in any order, shared or function-wise tables."""
    tuples = all_tuples(7, 2)
    inputs = make_inputs(11, 1 if tables == "shared" else len(functions), 7, 8, tuples, functions)
    check_against_reference(inputs, tuples, functions)


def test_given_tuples_any_order_and_repeats():
    """Tuples in any field order, repeated tuples, int32: each is just another tuple."""
    tuples = torch.tensor([[5, 2, 0], [0, 1, 6], [3, 1, 4], [5, 2, 0], [6, 4, 2]], dtype=torch.int32)
    check_against_reference(make_inputs(9, 4, 7, 20, tuples), tuples)


def test_pruned_entries_are_never_read():
    """NaN in the parameters of inactive tuples does not reach Z or the gradients: a pruned entry
    costs nothing and touches nothing."""
    tuples = all_tuples(6, 2)
    e, kappa, s, w = make_inputs(5, 4, 6, 8, tuples)
    mask = torch.ones(4, tuples.shape[0], dtype=torch.bool)
    mask[1, 3] = mask[2, 7] = False                       # kernel of tuple 3, scalar of tuple 7
    with torch.no_grad():
        kappa[3] = float("nan")
        s[7] = float("nan")
    with use_backend("kernel"):
        z = multi_function_interactions(e, tuples, kappa, s, w, mask=mask.to(e.device))
        z.sum().backward()
    assert torch.isfinite(z).all() and z[:, 1, 3].eq(0).all() and z[:, 2, 7].eq(0).all()
    assert torch.isfinite(e.grad).all() and torch.isfinite(w.grad).all()
    assert kappa.grad[3].eq(0).all() and s.grad[7] == 0


def test_all_masked_gives_zeros():
    tuples = all_tuples(5, 2)
    inputs = make_inputs(4, 4, 5, 8, tuples)
    mask = torch.zeros(4, tuples.shape[0], dtype=torch.bool, device=KERNEL_DEVICE)
    with use_backend("kernel"):
        z, grads = outputs_and_grads(call(multi_function_interactions, tuples, mask=mask), inputs,
                                     (torch.randn(4, 4, 10),))
    assert not z[0].any() and all(not g.any() for g in grads)


def naive(e, tuples, kappa, s, w):
    """Sample by sample, function by function, tuple by tuple, straight from the paper."""
    batch, tables, _, _ = e.shape
    z = torch.zeros(batch, 4, tuples.shape[0], dtype=e.dtype)
    for n, f, q in itertools.product(range(batch), range(4), range(tuples.shape[0])):
        rows = [e[n, f if tables > 1 else 0, int(i)] for i in tuples[q]]
        prod = torch.stack(rows).prod(0)
        z[n, f, q] = [prod.sum(), (kappa[q] * prod).sum(), s[q] * prod.sum(),
                      torch.stack([w[r] @ x for r, x in enumerate(rows)]).prod()][f]
    return z


@pytest.mark.parametrize("tables, order", [(4, 2), (1, 3), (4, 4)])
def test_reference_matches_naive_loop(tables, order):
    tuples = all_tuples(5, order)
    inputs = [x.detach().double() for x in make_inputs(3, tables, 5, 4, tuples, device="cpu")]
    torch.testing.assert_close(reference(inputs[0], tuples, *inputs[1:]), naive(inputs[0], tuples, *inputs[1:]),
                               rtol=1e-12, atol=1e-12)


def test_saved_tensors_scale_with_inputs_not_products():
    """Autograd keeps the inputs only: never the F [B, P, d] products the reference materialises."""
    batch, fields, dim = 64, 23, 20
    tuples = all_tuples(fields, 2)
    inputs = make_inputs(batch, 4, fields, dim, tuples)
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with use_backend("kernel"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z = multi_function_interactions(inputs[0], tuples.to(KERNEL_DEVICE), *inputs[1:])
    numel = sum(t.numel() for t in saved)
    bound = sum(t.numel() for t in inputs) + tuples.numel()
    assert numel <= bound, f"saved {numel} elements > {bound}"
    assert numel < 4 * batch * tuples.shape[0] * dim / 4
    assert z.grad_fn is not None


def test_empty_batch():
    tuples = all_tuples(5, 2)
    inputs = make_inputs(0, 4, 5, 8, tuples)
    with use_backend("kernel"):
        z = multi_function_interactions(inputs[0], tuples.to(KERNEL_DEVICE), *inputs[1:])
        assert z.shape == (0, 4, 10)
        z.sum().backward()
    assert inputs[0].grad.shape == inputs[0].shape and not inputs[1].grad.any()


def test_backward_is_deterministic():
    tuples = all_tuples(7, 2)
    inputs = make_inputs(9, 4, 7, 20, tuples)
    upstream = (torch.randn(9, 4, 21),)
    with use_backend("kernel"):
        first, second = (outputs_and_grads(call(multi_function_interactions, tuples), inputs, upstream)[1]
                         for _ in range(2))
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_public_op_runs_reference_on_cpu_by_default():
    tuples = all_tuples(4, 2)
    inputs = make_inputs(4, 4, 4, 8, tuples, device="cpu")
    with use_backend("auto"):
        torch.testing.assert_close(multi_function_interactions(inputs[0], tuples, *inputs[1:]),
                                   reference(inputs[0], tuples, *inputs[1:]))


def test_opcheck():
    tuples = all_tuples(5, 3).to(KERNEL_DEVICE)
    e, kappa, s, w = (x.detach() for x in make_inputs(5, 4, 5, 8, tuples))
    mask = random_mask(4, 10).to(KERNEL_DEVICE)
    codes = [0, 1, 2, 3]
    torch.library.opcheck(op_module._forward, (e, tuples, kappa, s, w, codes, mask))
    torch.library.opcheck(op_module._forward, (e[:, :1], tuples, None, None, None, [0], None))
    grad_z = torch.randn(5, 4, 10, device=KERNEL_DEVICE)
    torch.library.opcheck(op_module._backward, (grad_z, e, tuples, kappa, s, w, codes, mask))


@pytest.mark.parametrize("masked", [False, True], ids=["dense", "masked"])
def test_torch_compile_fullgraph_forward_backward(masked):
    tuples = all_tuples(7, 2).to(KERNEL_DEVICE)
    inputs = make_inputs(13, 4, 7, 8, tuples)
    mask = random_mask(4, 21).to(KERNEL_DEVICE) if masked else None
    grad_z = torch.randn(13, 4, 21, device=KERNEL_DEVICE)

    def step(e, kappa, s, w):
        return (multi_function_interactions(e, tuples, kappa, s, w, mask=mask) * grad_z).sum()

    assert_compiled_grads_match(step, inputs)


def test_gradcheck_float64_reference_path():
    """float64 runs the reference through the public op, so torch.autograd.gradcheck applies."""
    tuples = torch.tensor([[0, 1, 2], [3, 1, 0]])
    inputs = make_inputs(3, 4, 4, 5, tuples, dtype=torch.float64, device="cpu")
    assert torch.autograd.gradcheck(call(multi_function_interactions, tuples), inputs)


def test_kernel_backend_rejects_float64():
    tuples = all_tuples(4, 2)
    inputs = make_inputs(3, 4, 4, 5, tuples, dtype=torch.float64, device="cpu")
    with use_backend("kernel"), pytest.raises(TypeError, match="fused kernels take"):
        multi_function_interactions(inputs[0], tuples, *inputs[1:])


def args(**over):
    """Valid keyword arguments (all four functions, M = 5, d = 8, three pairs) with some replaced."""
    base = dict(embeddings=torch.randn(4, 4, 5, 8), tuples=torch.tensor([[0, 1], [2, 3], [4, 0]]),
                kappa=torch.randn(3, 8), s=torch.randn(3), w=torch.randn(2, 8))
    base.update(over)
    return base


@pytest.mark.parametrize("kwargs, error, match", [
    (args(embeddings=torch.randn(4, 5, 8)), ValueError, "embeddings must have 4 dimensions"),
    (args(embeddings=torch.randn(4, 3, 5, 8)), ValueError, "1 table .* or one per function"),
    (args(embeddings=torch.randint(0, 3, (4, 4, 5, 8))), TypeError, "embeddings must have dtype"),
    (args(tuples=torch.tensor([[0, 5]]), kappa=torch.randn(1, 8), s=torch.randn(1)), ValueError,
     r"fields 0\.\.4"),
    (args(tuples=torch.tensor([[-1, 2], [0, 1], [1, 2]])), ValueError, r"fields 0\.\.4"),
    (args(tuples=torch.tensor([[1, 2], [3, 3], [0, 1]])), ValueError, "distinct fields"),
    (args(tuples=torch.tensor([[0.0, 1.0]])), TypeError, "tuples must have dtype"),
    (args(tuples=torch.tensor([0, 1, 2])), ValueError, "tuples must have 2 dimensions"),
    (args(tuples=torch.zeros(0, 2, dtype=torch.long)), ValueError, "non-empty"),
    (args(tuples=torch.tensor([[0, 1, 2, 3, 4]] * 3)), ValueError, "order p in 2..4"),
    (args(kappa=None), ValueError, "'kernel' function needs kappa"),
    (args(kappa=torch.randn(3, 7)), ValueError, r"kappa must have shape \[3, 8\]"),
    (args(s=torch.randn(4)), ValueError, r"s must have shape \[3\]"),
    (args(w=torch.randn(3, 8)), ValueError, r"w must have shape \[2, 8\]"),
    (args(w=torch.randn(2, 8, dtype=torch.float16)), TypeError, "share one dtype"),
    (args(mask=torch.ones(4, 3)), TypeError, "mask must have dtype"),
    (args(mask=torch.ones(4, 2, dtype=torch.bool)), ValueError, r"mask must have shape \[4, 3\]"),
    (args(s=torch.randn(3, device="meta")), ValueError, "same device"),
    (args(functions=("inner", "fancy")), ValueError, "functions must be"),
    (args(functions=("inner", "inner")), ValueError, "may appear once"),
    (args(functions=(), embeddings=torch.randn(4, 1, 5, 8)), ValueError, "functions must be"),
    (args(functions=("inner", "kernel", "outer"), embeddings=torch.randn(4, 1, 5, 8)), ValueError,
     "s is only used by the 'scalar' function"),
])
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        multi_function_interactions(**kwargs)
