"""field_attention: fused Triton kernels vs the float64 reference (Y, A and every gradient), the
reference vs a naive per-sample loop, launch configuration, opcheck, torch.compile, gradcheck,
error paths."""
import importlib
import math

import pytest
import torch

from fastint import use_backend
from fastint.kernels import field_attention as kernels
from fastint.kernels._common import Target
from fastint.ops.field_attention import field_attention
from fastint.options import FieldAttentionOptions
from fastint.reference.field_attention import field_attention as reference
from tests.helpers import KERNEL_DEVICE, KERNEL_DTYPES, assert_compiled_grads_match, check_kernel_against_reference

op_module = importlib.import_module("fastint.ops.field_attention")
H100 = Target(interpreter=False, sm_count=132, capability=(9, 0))

PARAMS = ("w_qkv", "b_qkv", "w_res", "b_res", "ln_weight", "ln_bias")

# op options and the parameters present, per configuration (the published variants + extremes)
CONFIGS = {
    "tf": (dict(qkv_relu=True, residual="project", res_relu=True, layer_norm="after"),
           {"b_qkv", "w_res", "b_res", "ln_weight", "ln_bias"}),
    "paper": (dict(scale=1.0, residual="project"), {"w_res"}),
    "fuxictr-identity": (dict(residual="identity", layer_norm="before"), {"ln_weight", "ln_bias"}),
    "fuxictr-project": (dict(scale=1.0, residual="project", layer_norm="before"),
                        {"w_res", "ln_weight", "ln_bias"}),
    "no-residual": (dict(qkv_relu=True, residual="none", out_relu=False), {"b_qkv"}),
    "plain-ln": (dict(scale=0.5, residual="project", layer_norm="after"), {"w_res", "b_res"}),
}


def sign_pattern(n: int, period: int) -> torch.Tensor:
    """``+1, .., +1, -1, .., -1, ...`` in runs of ``period``."""
    return 1.0 - 2.0 * ((torch.arange(n) // period) % 2).double()


def make_inputs(config, batch, fields, dim, heads, head_dim, dtype=torch.float32, device="cpu",
                margin=False):
    """Leaves ``(x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias)`` (``None`` where absent).

    ``margin=True`` keeps every ReLU input away from 0 (biases and identity-residual inputs of
    +-2..3 in alternating column runs, the rest with std ~0.3): half-precision tests then compare
    against the float64 reference without ReLU-mask flips, where a flip makes an O(1) gradient
    difference that no half-precision implementation (eager PyTorch included) avoids.
    """
    options, present = CONFIGS[config]
    width = heads * head_dim
    shift = 1.0 if margin else 0.0
    identity = options["residual"] == "identity"
    w_scale = ((0.1 if identity else 0.6) if margin else 1.0) / math.sqrt(dim)  # margin: x W std ~0.3
    x = 0.5 * torch.randn(batch, fields, dim, dtype=torch.float64)
    if identity:
        x = x * (0.6 if margin else 1.0) + 3 * shift * sign_pattern(dim, 1)
    values = {
        "x": x,
        "w_qkv": w_scale * torch.randn(dim, 3 * width, dtype=torch.float64),
        "b_qkv": 0.1 * torch.randn(3 * width, dtype=torch.float64) + 2 * shift * sign_pattern(3 * width, 2),
        "w_res": w_scale * torch.randn(dim, width, dtype=torch.float64),
        "b_res": 0.1 * torch.randn(width, dtype=torch.float64) + 3 * shift * sign_pattern(width, 4),
        "ln_weight": 1.0 + 0.2 * torch.randn(width, dtype=torch.float64),
        "ln_bias": 0.2 * torch.randn(width, dtype=torch.float64),
    }
    leaves = [values["x"]] + [values[p] if p in present | {"w_qkv"} else None for p in PARAMS]
    return [None if t is None else t.to(device, dtype).requires_grad_() for t in leaves]


def with_options(fn, heads, options, return_attention=True):
    """``fn(*tensors)`` with the layer's options (the scaffold passes the tensors positionally)."""
    return lambda *tensors: fn(*tensors, num_heads=heads, return_attention=return_attention, **options)


def check_against_reference(config, shape, dtype, *, margin=False, use_y=True, use_a=True, inputs=None):
    batch, fields, dim, heads, head_dim = shape
    options = CONFIGS[config][0]
    if inputs is None:
        inputs = make_inputs(config, *shape, dtype=dtype, device=KERNEL_DEVICE, margin=margin)
    upstream = (torch.randn(batch, fields, heads * head_dim) if use_y else None,
                torch.randn(batch, heads, fields, fields) if use_a else None)
    names = ["x"] + [p for p, t in zip(PARAMS, inputs[1:]) if t is not None]
    _, a = check_kernel_against_reference(with_options(field_attention, heads, options),
                                          with_options(reference, heads, options), inputs, upstream,
                                          dtype, ("Y", "A"), names)
    if fields == 1:                     # one key: the softmax is exactly 1
        assert torch.equal(a.cpu().float(), torch.ones_like(a.cpu().float()))


# (config, (batch, M, d, H, dh)): batches not multiples of SAMPLES; every M, d, H and dh appears,
# plus a head width that is not a power of two (dh = 20), deepctr's dh = d / H and H = 3.
FP32_CASES = [
    ("tf", (37, 7, 16, 2, 16)),
    ("tf", (13, 39, 40, 1, 32)),
    ("paper", (37, 23, 8, 2, 8)),
    ("paper", (37, 1, 16, 1, 8)),
    ("paper", (11, 39, 40, 2, 20)),
    ("fuxictr-identity", (37, 23, 16, 1, 16)),
    ("fuxictr-identity", (37, 2, 32, 2, 16)),
    ("fuxictr-project", (13, 39, 8, 2, 32)),
    ("no-residual", (37, 7, 40, 2, 16)),
    ("plain-ln", (37, 2, 16, 2, 8)),
    ("tf", (23, 7, 16, 3, 8)),                 # H_PAD = 4 > H: a padded head
    ("tf", (3, 39, 16, 2, 16)),                # one sample per program: queries in two blocks of 32 rows (the
]                                              # backward's two passes), the last partly padded
HALF_CASES = [
    ("tf", (13, 39, 16, 2, 16)),
    ("fuxictr-identity", (37, 23, 32, 2, 16)),
    ("no-residual", (37, 1, 8, 1, 8)),
    ("plain-ln", (37, 7, 40, 2, 32)),
    ("tf", (3, 39, 16, 2, 16)),                # query blocks (see FP32_CASES)
]


def _case_id(case):
    return "{}-B{}-M{}-d{}-H{}-dh{}".format(case[0], *case[1])


@pytest.mark.parametrize("case", FP32_CASES, ids=_case_id)
def test_kernel_matches_reference_fp32(case):
    check_against_reference(*case, torch.float32)


@pytest.mark.parametrize("dtype", [t for t in KERNEL_DTYPES if t != torch.float32], ids=str)
@pytest.mark.parametrize("case", HALF_CASES, ids=_case_id)
def test_kernel_matches_reference_half(case, dtype):
    check_against_reference(*case, dtype, margin=True)


@pytest.mark.parametrize("used", ["y", "a"])
def test_gradient_through_one_output(used):
    check_against_reference("tf", (21, 7, 16, 2, 8), torch.float32, use_y=used == "y", use_a=used == "a")


def test_without_attention_output():
    """The default call returns Y only; its backward gets no gradient for A."""
    inputs = make_inputs("tf", 13, 7, 16, 2, 8, device=KERNEL_DEVICE)
    names = ["x"] + [p for p, t in zip(PARAMS, inputs[1:]) if t is not None]
    options = CONFIGS["tf"][0]
    y, = check_kernel_against_reference(
        with_options(field_attention, 2, options, return_attention=False),
        with_options(reference, 2, options, return_attention=False), inputs,
        (torch.randn(13, 7, 16),), torch.float32, ("Y",), names)
    assert isinstance(y, torch.Tensor) and y.shape == (13, 7, 16)


def test_non_contiguous_inputs():
    x, w_qkv, *rest = make_inputs("paper", 9, 7, 16, 2, 8, device=KERNEL_DEVICE)
    x_t = x.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    w_t = w_qkv.detach().T.contiguous().T.requires_grad_()
    assert not x_t.is_contiguous() and not w_t.is_contiguous()
    check_against_reference("paper", (9, 7, 16, 2, 8), torch.float32, inputs=[x_t, w_t, *rest])


def test_backward_op_returns_every_gradient_absent_ones_empty():
    """The backward custom op returns dx and one gradient per parameter, ``[0]`` where absent."""
    inputs = [None if t is None else t.detach() for t in make_inputs("paper", 5, 3, 8, 2, 8)]
    options = FieldAttentionOptions(2, scale=1.0)
    grads = op_module._backward(torch.randn(5, 3, 16), None, *inputs, *options.astuple())
    assert len(grads) == 1 + len(PARAMS)
    for g, t in zip(grads, inputs):
        assert g.shape == ((0,) if t is None else t.shape)


def test_backward_op_without_upstream_gradients():
    inputs = [None if t is None else t.detach() for t in make_inputs("tf", 5, 3, 8, 2, 8)]
    options = FieldAttentionOptions(2, 0.5, True, "project", True, True, "after")
    grads = op_module._backward(None, None, *inputs, *options.astuple())
    assert [g.shape for g in grads] == [t.shape for t in inputs] and not any(g.any() for g in grads)


def test_empty_batch():
    inputs = make_inputs("tf", 0, 5, 16, 2, 8, device=KERNEL_DEVICE)
    with use_backend("kernel"):
        y, a = field_attention(*inputs, num_heads=2, return_attention=True, **CONFIGS["tf"][0])
        assert y.shape == (0, 5, 16) and a.shape == (0, 2, 5, 5)
        (y.sum() + a.sum()).backward()
    assert inputs[0].grad.shape == inputs[0].shape
    assert not any(t.grad.any() for t in inputs[1:])


def test_grid_has_no_axis_1_limit():
    """B*H far above 65,535 -> one grid axis only (computed, not launched)."""
    batch, heads = 1_000_000, 8
    cfg = kernels.launch_config(batch, 39, 16, 32, torch.float16, FieldAttentionOptions(heads), H100)
    assert batch * heads > 65_535
    assert cfg.grid == (math.ceil(batch / cfg.meta["SAMPLES"]),)


@pytest.mark.parametrize("fields, m_pad, samples, blocks", [(1, 16, 4, 1), (10, 16, 4, 1), (23, 32, 2, 1), (39, 64, 1, 1),
                                                       (100, 128, 1, 2)])
def test_launch_config_on_gpu(fields, m_pad, samples, blocks):
    """fp16: 64 query rows per forward program (whole samples, or query blocks of a sample: ``blocks``
    per sample); fp32: 16 query rows per program in the forward and the attention backward."""
    options = FieldAttentionOptions(2, qkv_relu=True, layer_norm="after")
    present = ("w_qkv", "b_qkv", "ln_weight")
    fwd = kernels.launch_config(65536, fields, 16, 32, torch.float16, options, H100, present=present,
                                return_attention=True)
    assert fwd.kernel is kernels._field_attention_fwd_kernel
    assert {k: fwd.meta[k] for k in ("M_PAD", "D_PAD", "H_PAD", "DH_PAD")} == {
        "M_PAD": m_pad, "D_PAD": 16, "H_PAD": 2, "DH_PAD": 32}
    assert fwd.meta["SAMPLES"] == samples and fwd.meta["ROWS"] == 64 and fwd.grid == (math.ceil(65536 / samples) * blocks,)
    assert fwd.meta["HAS_BQKV"] and fwd.meta["HAS_LNW"] and not fwd.meta["HAS_LNB"] and fwd.meta["STORE_A"]
    assert fwd.meta["LAYER_NORM"] == 1 and fwd.meta["PRECISION"] == "ieee" and 4 <= fwd.num_warps <= 16
    assert fwd.maxnreg == min(255, 65536 // (32 * fwd.num_warps))
    assert fwd.meta["KEYS"] == 16                                 # key blocks of 16 rows
    wide = {dt: kernels.launch_config(65536, fields, 64, 32, dt, options, H100, present=present).meta["D_CHUNK"]
            for dt in (torch.float32, torch.float16)}
    assert wide == {torch.float32: 16, torch.float16: 64}        # fp32 projections in 16-column steps of x
    fp32 = kernels.launch_config(65536, fields, 16, 32, torch.float32, options, H100, present=present)
    fp32_blocks = math.ceil(fields / 16) if m_pad > 16 else 1
    assert (fp32.meta["SAMPLES"], fp32.meta["ROWS"], fp32.num_warps) == (1, 16, 4)
    assert fp32.grid == (65536 * fp32_blocks,)
    # backward: four kernels, fp32 16 query rows per program
    out, att, inp, par = (kernels.launch_config(65536, fields, 16, 32, torch.float32, options, H100, kernel=k,
                                                present=present, grad_a=True)
                          for k in ("bwd_output", "bwd_attention", "bwd_input", "bwd_parameters"))
    assert out.kernel is kernels._field_attention_bwd_output_kernel and att.kernel is \
        kernels._field_attention_bwd_attention_kernel and par.kernel is kernels._field_attention_bwd_parameters_kernel
    assert inp.kernel is kernels._field_attention_bwd_input_kernel and not inp.meta["IDENTITY"]
    assert inp.grid == (math.ceil(65536 * fields / inp.meta["BLOCK_ROWS"]),)   # dx rows
    assert out.num_stages == att.num_stages == 1 and out.meta["HAS_GY"] and att.meta["HAS_GA"]
    assert out.meta["PRECISION"] == att.meta["PRECISION"] == par.meta["PRECISION"] == "tf32x3"  # 3xTF32
    assert out.meta["SAMPLES"] == att.meta["SAMPLES"] == 1 and out.meta["ROWS"] == att.meta["ROWS"] == 16
    assert out.grid == (4 * 132,)                                  # persistent, over 65536 * fp32_blocks tiles
    assert att.grid == (65536,)                                    # a sample each, its query blocks inside
    assert par.grid[1] == 4 and par.grid[0] * par.grid[1] >= 4 * 132    # G: [dP_q|dP_k|dP_v|dR_p], 4*2*32 columns
    assert "_field_attention_bwd_output_kernel" in out.describe()
    with pytest.raises(ValueError, match="kernel must be one of"):
        kernels.launch_config(65536, fields, 16, 32, torch.float32, options, H100, kernel="bwd")
    # interpreter: a handful of big programs
    interp = kernels.launch_config(37, fields, 16, 32, torch.float32, options, Target(interpreter=True))
    assert interp.meta["SAMPLES"] == 16 and interp.grid == (3,) and interp.meta["KEYS"] == 16 * m_pad // 2
    # ... and with one sample per program, queries in blocks of half a sample (from M_PAD = 32 on)
    small = {k: kernels.launch_config(3, fields, 16, 32, torch.float32, options, Target(interpreter=True), kernel=k)
             for k in ("fwd", "bwd_attention")}
    split = m_pad >= 32
    assert small["fwd"].meta["ROWS"] == small["bwd_attention"].meta["ROWS"] == (m_pad // 2 if split else m_pad)
    assert small["fwd"].grid == (3 * (math.ceil(fields / (m_pad // 2)) if split else 1),)
    assert small["bwd_attention"].grid == (3,)


def naive(x, w_qkv, b_qkv, w_res, b_res, ln_weight, ln_bias, *, num_heads, scale, qkv_relu, residual,
          res_relu, out_relu, layer_norm, ln_eps):
    """Sample by sample, head by head, field by field, from the equations."""
    batch, fields, _ = x.shape
    width = w_qkv.shape[1] // 3
    dh = width // num_heads
    scale = 1 / math.sqrt(dh) if scale is None else scale
    act = torch.relu if qkv_relu else (lambda t: t)
    ys = torch.zeros(batch, fields, width, dtype=x.dtype)
    attention = torch.zeros(batch, num_heads, fields, fields, dtype=x.dtype)
    for n in range(batch):
        qkv = [act(x[n, i] @ w_qkv + (0 if b_qkv is None else b_qkv)) for i in range(fields)]
        for i in range(fields):
            z = torch.zeros(width, dtype=x.dtype)
            for h in range(num_heads):
                q = qkv[i][h * dh:(h + 1) * dh]
                keys = [qkv[j][width + h * dh:width + (h + 1) * dh] for j in range(fields)]
                values = [qkv[j][2 * width + h * dh:2 * width + (h + 1) * dh] for j in range(fields)]
                e = torch.stack([torch.exp(scale * (q @ k)) for k in keys])
                attention[n, h, i] = e / e.sum()
                z[h * dh:(h + 1) * dh] = sum(attention[n, h, i, j] * values[j] for j in range(fields))
            if residual == "project":
                r = x[n, i] @ w_res + (0 if b_res is None else b_res)
                z = z + (torch.relu(r) if res_relu else r)
            elif residual == "identity":
                z = z + x[n, i]

            def norm(t):
                t = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + ln_eps)
                return t * (1 if ln_weight is None else ln_weight) + (0 if ln_bias is None else ln_bias)
            z = norm(z) if layer_norm == "before" else z
            z = torch.relu(z) if out_relu else z
            ys[n, i] = norm(z) if layer_norm == "after" else z
    return ys, attention


@pytest.mark.parametrize("config", ["tf", "fuxictr-identity", "plain-ln"])
def test_reference_matches_naive_loops(config):
    inputs = [None if t is None else t.detach() for t in make_inputs(config, 3, 5, 8, 2, 4, dtype=torch.float64)]
    options = {"scale": None, "qkv_relu": False, "res_relu": False, "out_relu": True, "layer_norm": "none",
               "ln_eps": 1e-5, **CONFIGS[config][0]}
    want = naive(*inputs, num_heads=2, **options)
    for out, expected in zip(reference(*inputs, num_heads=2, return_attention=True, **options), want):
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_public_op_runs_reference_on_cpu_by_default():
    inputs = make_inputs("tf", 4, 3, 8, 2, 8)
    with use_backend("auto"):
        out = field_attention(*inputs, num_heads=2, **CONFIGS["tf"][0])
    torch.testing.assert_close(out, reference(*inputs, num_heads=2, **CONFIGS["tf"][0]))


def _flat_options(config, heads):
    return FieldAttentionOptions(heads, **{"scale": 0.5, **CONFIGS[config][0]}).astuple()


# (config, return_attention values, upstream gradients given): every flag and optional-gradient
# combination once (three samples: three interpreted programs per launch)
OPCHECKS = [("tf", (True, False), ("y+a", "a")), ("fuxictr-identity", (True,), ("y",))]


@pytest.mark.parametrize("config, return_attention, upstream", OPCHECKS, ids=[c[0] for c in OPCHECKS])
def test_opcheck(config, return_attention, upstream):
    inputs = make_inputs(config, 3, 7, 16, 2, 8, device=KERNEL_DEVICE)
    for flag in return_attention:
        torch.library.opcheck(op_module._forward, (*inputs, *_flat_options(config, 2), flag))
    detached = [None if t is None else t.detach() for t in inputs]
    grads = {"y": torch.randn(3, 7, 16, device=KERNEL_DEVICE), "a": torch.randn(3, 2, 7, 7, device=KERNEL_DEVICE)}
    for given in upstream:
        gy, ga = (grads[k] if k in given else None for k in ("y", "a"))
        torch.library.opcheck(op_module._backward, (gy, ga, *detached, *_flat_options(config, 2)))


@pytest.mark.parametrize("config", ["tf", "fuxictr-project"])
def test_gradcheck_float64_reference_path(config):
    """float64 runs the reference through the public op, so torch.autograd.gradcheck applies."""
    inputs = make_inputs(config, 3, 4, 8, 2, 4, dtype=torch.float64)
    leaves = tuple(t for t in inputs if t is not None)

    def fn(*tensors):
        it = iter(tensors)
        full = [None if t is None else next(it) for t in inputs]
        return field_attention(*full, num_heads=2, return_attention=True, **CONFIGS[config][0])
    assert torch.autograd.gradcheck(fn, leaves)


def test_torch_compile_fullgraph_forward_backward():
    inputs = make_inputs("tf", 13, 7, 16, 2, 8, device=KERNEL_DEVICE)
    leaves = [t for t in inputs if t is not None]
    grad_y, grad_a = torch.randn(13, 7, 16), torch.randn(13, 2, 7, 7)

    def step(*tensors):
        y, a = field_attention(*tensors, num_heads=2, return_attention=True, **CONFIGS["tf"][0])
        return (y * grad_y.to(y.device)).sum() + (a * grad_a.to(y.device)).sum()

    assert_compiled_grads_match(step, inputs, leaves)


def _args(**over):
    """Valid keyword arguments (d=8, H=2, dh=4) with some replaced."""
    base = dict(x=torch.randn(4, 5, 8), w_qkv=torch.randn(8, 24), b_qkv=torch.randn(24),
                w_res=torch.randn(8, 8), b_res=None, ln_weight=None, ln_bias=None, num_heads=2)
    base.update(over)
    return base


@pytest.mark.parametrize("args, error, match", [
    (_args(num_heads=5), ValueError, r"w_qkv must have shape \[d, 3\*num_heads\*head_dim\] with num_heads=5"),
    (_args(num_heads=0), ValueError, "num_heads must be a positive int"),
    (_args(w_qkv=torch.randn(7, 24)), ValueError, r"w_qkv must have shape \[8, 24\]"),
    (_args(x=torch.randn(4, 8)), ValueError, "x must have 3 dimensions"),
    (_args(x=torch.randn(4, 0, 8)), ValueError, "at least one field"),
    (_args(b_qkv=torch.randn(23)), ValueError, r"b_qkv must have shape \[24\]"),
    (_args(w_res=None), ValueError, "needs w_res"),
    (_args(w_res=torch.randn(8, 7)), ValueError, r"w_res must have shape \[8, 8\]"),
    (_args(residual="identity"), ValueError, "only used with residual=\"project\""),
    (_args(residual="identity", w_res=None, w_qkv=torch.randn(8, 12), b_qkv=None), ValueError,
     "needs d == num_heads\\*head_dim"),
    (_args(residual="gated"), ValueError, "residual must be one of"),
    (_args(layer_norm="sandwich"), ValueError, "layer_norm must be one of"),
    (_args(ln_weight=torch.ones(8)), ValueError, "ln_weight/ln_bias are only used"),
    (_args(w_qkv=torch.randn(8, 24, dtype=torch.float16)), TypeError, "share one dtype"),
    (_args(x=torch.randn(4, 5, 8).long()), TypeError, "x must have dtype"),
    (_args(scale="big"), ValueError, "could not convert string to float"),
    (_args(b_qkv=torch.randn(24, device="meta")), ValueError, "same device"),
])
def test_errors(args, error, match):
    with pytest.raises(error, match=match):
        field_attention(**args)


def test_kernel_backend_rejects_float64():
    args = _args(**{k: v.double() for k, v in _args().items() if isinstance(v, torch.Tensor)})
    with use_backend("kernel"), pytest.raises(TypeError, match="fused kernels take float32/float16/bfloat16"):
        field_attention(**args)
