"""embedding_bag: C++ op vs float64 reference and torch's F.embedding_bag, gradients, determinism,
torch.library/compile integration and error paths."""
import pytest
import torch
import torch.nn.functional as F

from fastint import use_backend
from fastint.ops.embedding_bag import MODES, embedding_bag
from fastint.reference.embedding_bag import embedding_bag as reference
from tests.helpers import as_reference, assert_rel_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def csr_bags(bags: int, rows: int, max_len: int, index_dtype=torch.int64, missing=True):
    """Random CSR bags with 0..max_len entries, duplicates, and (optionally) missing ids."""
    lengths = torch.randint(0, max_len + 1, (bags,))
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    low = -2 if missing else 0
    ids = torch.randint(low, rows, (int(offsets[-1]),)).to(index_dtype)
    return ids.to(DEVICE), offsets.to(index_dtype).to(DEVICE)


def naive(weight, ids, offsets, psw, mode):
    """Per-bag Python loop: the reference's own oracle."""
    out = []
    for b in range(len(offsets) - 1):
        total, denom = torch.zeros(weight.shape[1], dtype=torch.float64), 0.0
        for e in range(int(offsets[b]), int(offsets[b + 1])):
            if ids[e] >= 0:
                w = 1.0 if psw is None else float(psw[e])
                total += w * weight[ids[e]].double()
                denom += w
        out.append(total / denom if mode == "mean" and denom != 0 else total * (mode == "sum"))
    return torch.stack(out)


@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_reference_matches_naive_loop(mode, weighted):
    weight = torch.randn(20, 5, dtype=torch.float64)
    ids, offsets = csr_bags(9, 20, 4)
    ids, offsets = ids.cpu(), offsets.cpu()
    psw = torch.rand(ids.shape, dtype=torch.float64) if weighted else None
    out = reference(ids, weight, offsets, psw, mode, num_fields=3)
    torch.testing.assert_close(out.reshape(9, 5), naive(weight, ids, offsets, psw, mode))


@pytest.mark.parametrize("fields, dim", [(1, 1), (2, 8), (7, 16), (23, 40), (39, 64)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_dense_form_forward_and_grads(fields, dim, dtype, index_dtype):
    batch, rows = 37, 301
    weight = torch.randn(rows, dim, dtype=dtype, device=DEVICE, requires_grad=True)
    ids = torch.randint(-1, rows, (batch, fields), device=DEVICE).to(index_dtype)
    ids[0, 0] = 5
    psw = torch.randn(batch, fields, dtype=dtype, device=DEVICE, requires_grad=True)
    out = embedding_bag(ids, weight, per_sample_weights=psw)
    assert out.shape == (batch, fields, dim) and out.dtype == dtype
    ref_w, ref_psw = as_reference(weight), as_reference(psw)
    ref = reference(ids.cpu(), ref_w, None, ref_psw)
    assert_rel_close(out, ref, dtype, "output")
    grad = torch.randn_like(ref)
    out.backward(grad.to(dtype).to(DEVICE))
    ref.backward(grad)
    assert_rel_close(weight.grad, ref_w.grad, dtype, "weight grad")
    assert_rel_close(psw.grad, ref_psw.grad, dtype, "per_sample_weights grad")


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float64])
@pytest.mark.parametrize("offset", [0, 1])
def test_table_views_at_any_storage_offset(dtype, offset):
    """A table that is a view at an odd storage offset is not aligned to the CUDA forward's vector
    loads (D % 4 == 0 takes them otherwise): both paths give the reference's bags."""
    rows, dim = 50, 12
    storage = torch.randn(rows * dim + offset, dtype=dtype, device=DEVICE)
    weight = storage[offset:].view(rows, dim)
    ids, offsets = csr_bags(23, rows, 5)
    out = embedding_bag(ids, weight, offsets, mode="mean")
    ref = reference(ids.cpu(), as_reference(weight), offsets.cpu(), None, "mean")
    if dtype == torch.float64:
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-12, atol=1e-12)
    else:
        assert_rel_close(out, ref, dtype, "output")


@pytest.mark.parametrize("pooling_factor", [0, 1, 3, 8])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_csr_form_forward_and_grads(pooling_factor, mode, weighted):
    batch, fields, rows, dim = 29, 3, 97, 16
    weight = torch.randn(rows, dim, device=DEVICE, requires_grad=True)
    ids, offsets = csr_bags(batch * fields, rows, pooling_factor)
    psw = torch.rand(ids.shape, device=DEVICE, requires_grad=True) if weighted else None
    out = embedding_bag(ids, weight, offsets, psw, mode=mode, num_fields=fields)
    ref_w, ref_psw = as_reference(weight), as_reference(psw)
    ref = reference(ids.cpu(), ref_w, offsets.cpu(), ref_psw, mode, num_fields=fields)
    assert out.shape == (batch, fields, dim)
    if pooling_factor == 0:
        assert not out.any()
        return
    assert_rel_close(out, ref, torch.float32, "output")
    grad = torch.randn_like(ref)
    out.backward(grad.float().to(DEVICE))
    ref.backward(grad)
    assert_rel_close(weight.grad, ref_w.grad, torch.float32, "weight grad")
    if weighted and mode == "mean" and pooling_factor == 1:
        # a mean over at most one present id does not depend on its weight: the gradient is 0
        assert psw.grad.abs().max() < 1e-3  # fp32 cancellation in (g.r - g.out) / w
    elif weighted:
        assert_rel_close(psw.grad, ref_psw.grad, torch.float32, "per_sample_weights grad")


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_matches_torch_embedding_bag(mode):
    weight = torch.randn(500, 32, device=DEVICE)
    ids, offsets = csr_bags(64, 500, 6, missing=False)
    ours = embedding_bag(ids, weight, offsets, mode=mode).squeeze(1)
    torch.testing.assert_close(ours, F.embedding_bag(ids, weight, offsets[:-1], mode=mode))


def test_missing_ids_do_not_count_in_mean():
    weight = torch.arange(12.0, device=DEVICE).view(6, 2)
    out = embedding_bag(torch.tensor([1, -1, 3, -7], device=DEVICE), weight,
                        torch.tensor([0, 3, 4], device=DEVICE), mode="mean")
    torch.testing.assert_close(out.squeeze(1), torch.tensor([[4.0, 5.0], [0.0, 0.0]], device=DEVICE))


def test_sparse_gradient_is_coalesced_and_equals_dense():
    weight = torch.randn(50, 8, device=DEVICE, requires_grad=True)
    ids = torch.randint(-1, 50, (40, 6), device=DEVICE)
    embedding_bag(ids, weight, sparse=True).square().sum().backward()
    sparse = weight.grad
    assert sparse.is_sparse
    # coalesced: one entry per used row, in ascending order
    assert sparse._indices()[0].tolist() == sorted(set(ids[ids >= 0].tolist()))
    weight.grad = None
    embedding_bag(ids, weight).square().sum().backward()
    torch.testing.assert_close(sparse.to_dense(), weight.grad)


def test_backward_is_bit_identical_across_runs():
    weight = torch.randn(40, 24, device=DEVICE, requires_grad=True)
    ids, offsets = csr_bags(4000, 40, 8)            # every row appears hundreds of times
    grad = torch.randn(4000, 1, 24, device=DEVICE)
    grads = []
    for _ in range(2):
        weight.grad = None
        embedding_bag(ids, weight, offsets, mode="mean").backward(grad)
        grads.append(weight.grad.clone())
    assert torch.equal(grads[0], grads[1])


def test_empty_batch():
    weight = torch.randn(10, 4, device=DEVICE, requires_grad=True)
    out = embedding_bag(torch.empty(0, 3, dtype=torch.long, device=DEVICE), weight)
    assert out.shape == (0, 3, 4)
    out.sum().backward()
    assert weight.grad.shape == (10, 4) and not weight.grad.any()


def test_reference_backend_is_used_when_forced():
    weight = torch.randn(10, 4, device=DEVICE)
    ids = torch.randint(0, 10, (3, 2), device=DEVICE)
    with use_backend("reference"):
        torch.testing.assert_close(embedding_bag(ids, weight), embedding_bag(ids, weight, mode="sum"))


def test_opcheck():
    weight = torch.randn(30, 8, device=DEVICE, requires_grad=True)
    ids, offsets = csr_bags(12, 30, 3)
    psw = torch.rand(ids.shape, device=DEVICE, requires_grad=True)
    grad = torch.randn(12, 8, device=DEVICE)
    for mode in (0, 1):
        torch.library.opcheck(torch.ops.fastint.embedding_bag_forward, (weight, ids, offsets, psw, mode, False))
        # backward ops are not differentiable themselves: inputs that do not require grad
        torch.library.opcheck(torch.ops.fastint.embedding_bag_weight_grad,
                              (grad, ids, offsets, psw.detach(), mode, 30))
        torch.library.opcheck(torch.ops.fastint.embedding_bag_psw_grad,
                              (grad, weight.detach(), ids, offsets, psw.detach(), mode))


def test_torch_compile_fullgraph_forward_backward():
    weight = torch.randn(30, 8, device=DEVICE, requires_grad=True)
    ids = torch.randint(-1, 30, (9, 4), device=DEVICE)
    psw = torch.rand(9, 4, device=DEVICE, requires_grad=True)

    def step(w, p):
        return embedding_bag(ids, w, per_sample_weights=p, mode="sum").square().sum()

    torch._dynamo.reset()
    compiled = torch.autograd.grad(torch.compile(step, fullgraph=True)(weight, psw), (weight, psw))
    eager = torch.autograd.grad(step(weight, psw), (weight, psw))
    for c, e in zip(compiled, eager):
        torch.testing.assert_close(c, e)


def _args(**over):
    args = dict(weight=torch.randn(10, 4), indices=torch.tensor([0, 1, 2]), offsets=torch.tensor([0, 1, 3]),
                per_sample_weights=None, mode="sum")
    args.update(over)
    return args


@pytest.mark.parametrize("over, error, message", [
    (dict(indices=torch.tensor([0, 10, 2])), IndexError, "index 10 is out of range .* 10 rows"),
    (dict(indices=torch.tensor([[0, 12]]), offsets=None), IndexError, "index 12 is out of range"),
    (dict(offsets=torch.tensor([0, 2, 1, 3]), num_fields=3), ValueError, "non-decreasing"),
    (dict(offsets=torch.tensor([0, 5, 3]), num_fields=2), ValueError, "non-decreasing"),
    (dict(offsets=torch.tensor([0, 1, 2])), ValueError, "end at nnz=3"),
    (dict(offsets=torch.tensor([1, 2, 3])), ValueError, "start at 0"),
    (dict(offsets=torch.tensor([0, 1, 3]), num_fields=4), ValueError, "B\\*num_fields\\+1"),
    (dict(indices=torch.tensor([0.0, 1.0, 2.0])), TypeError, "indices must have dtype"),
    (dict(weight=torch.randn(10, 4).long()), TypeError, "weight must have dtype"),
    (dict(weight=torch.randn(10)), ValueError, "weight must have 2 dimensions"),
    (dict(per_sample_weights=torch.ones(2)), ValueError, "per_sample_weights must have shape"),
    (dict(per_sample_weights=torch.ones(3, dtype=torch.float64)), TypeError, "per_sample_weights must have dtype"),
    (dict(mode="max"), ValueError, "mode must be one of"),
    (dict(indices=torch.tensor([[0, 1, 2]]), offsets=None, num_fields=2), ValueError, "disagrees"),
])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_bad_arguments_raise(over, error, message, backend):
    """The C++ kernel checks ids and offsets itself; the Python path checks them for the reference."""
    with use_backend(backend), pytest.raises(error, match=message):
        embedding_bag(**_args(**over))


def test_device_mismatch_raises():
    with pytest.raises(ValueError, match="same device"):
        embedding_bag(**_args(weight=torch.randn(10, 4, device="meta")))


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_backward_treats_ids_past_the_table_as_missing(mode):
    """With the input checks off (FASTINT_CHECK_INPUTS=0) the CUDA forward skips an id >= N; the
    shared backward does the same: no gradient row for it (no out-of-bounds index_copy_ or
    sparse index) and, in mean mode, no place in the denominator."""
    ops, rows = torch.ops.fastint, 6
    ids = torch.tensor([1, 9, 3, 1, -1, 2], device=DEVICE)
    offsets = torch.tensor([0, 3, 6], device=DEVICE)
    psw = torch.tensor([0.5, 2.0, 1.5, 1.0, 3.0, 0.25], device=DEVICE, dtype=torch.float64)
    grad_out = torch.randn(2, 4, device=DEVICE, dtype=torch.float64)
    code = MODES[mode]
    dense = ops.embedding_bag_weight_grad(grad_out, ids, offsets, psw, code, rows)
    missing = ids.masked_fill(ids >= rows, -1)
    weight = torch.zeros(rows, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    reference(missing, weight, offsets, psw, mode).reshape(2, 4).backward(grad_out)
    torch.testing.assert_close(dense, weight.grad)
    unique, grad_rows = ops.embedding_bag_weight_grad_coalesced(grad_out, ids, offsets, psw, code, rows)
    assert unique.tolist() == [1, 2, 3] and grad_rows.shape == (3, 4)
    torch.testing.assert_close(grad_rows, weight.grad[unique])
