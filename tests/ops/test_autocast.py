"""Under torch.autocast the fused ops run their half-precision kernels: fp32 activations and
weights are cast to the autocast dtype (as nn.Linear's are), the kernel receives that dtype, the
output is in it, the gradients reach the fp32 leaves in fp32 and match the float64 reference.
(fp16 on the CPU interpreter; bf16 and fp16 on a GPU.)"""
import importlib

import pytest
import torch

from fastint import use_backend
from fastint.ops import afm_pooling, field_attention, hierarchical_aggregation
from fastint.reference.afm_pooling import afm_pooling as afm_reference
from fastint.reference.field_attention import field_attention as fa_reference
from fastint.reference.hierarchical_aggregation import hierarchical_aggregation as ha_reference
from tests.helpers import KERNEL_DEVICE, KERNEL_DTYPES, as_reference, assert_rel_close, randn

AUTOCAST_DTYPES = [t for t in KERNEL_DTYPES if t != torch.float32]
OPTIONS = dict(num_heads=2, qkv_relu=False, residual="project", layer_norm="after")


def leaves(*shapes_and_scales):
    return [randn(*shape, scale=scale, device=KERNEL_DEVICE, requires_grad=True)
            for shape, scale in shapes_and_scales]


CASES = {
    "field_attention": (lambda *t: field_attention(*t, **OPTIONS), lambda *t: fa_reference(*t, **OPTIONS),
                        lambda: leaves(((9, 7, 16), 0.5), ((16, 48), 0.1), ((48,), 0.1), ((16, 16), 0.1),
                                       ((16,), 0.1), ((16,), 1.0), ((16,), 0.1))),
    "afm_pooling": (afm_pooling, afm_reference,
                    lambda: leaves(((9, 7, 16), 1.0), ((16, 16), 0.25), ((16,), 0.3), ((16,), 1.0))),
    "hierarchical_aggregation": (hierarchical_aggregation, ha_reference,
                                 lambda: leaves(((9, 7, 16), 0.5), ((3, 16, 16), 0.25), ((3, 16), 0.1),
                                                ((3, 16), 0.5))),
}


@pytest.mark.parametrize("dtype", AUTOCAST_DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(CASES))
def test_autocast_runs_the_half_precision_kernel(name, dtype, monkeypatch):
    fn, reference, make = CASES[name]
    kernels = importlib.import_module(f"fastint.kernels.{name}")
    seen = []
    launcher = kernels.forward

    def recording(*args, **kwargs):
        seen.extend(t.dtype for t in args if isinstance(t, torch.Tensor) and t.is_floating_point())
        seen.extend(t.dtype for t in (args[1] if name == "field_attention" else ()) if t is not None)
        return launcher(*args, **kwargs)

    monkeypatch.setattr(kernels, "forward", recording)
    inputs = make()
    with use_backend("kernel"), torch.autocast(KERNEL_DEVICE, dtype=dtype):
        out = fn(*inputs)
    assert seen and set(seen) == {dtype}, f"the kernel saw {set(seen)}"
    assert out.dtype == dtype
    grad = torch.randn(out.shape)
    torch.autograd.backward(out, grad.to(out.device, dtype))
    ref_inputs = [as_reference(t) for t in inputs]
    ref = reference(*ref_inputs)
    torch.autograd.backward(ref, grad.double())
    assert_rel_close(out, ref, dtype, "output")
    for t, r in zip(inputs, ref_inputs):
        assert t.grad.dtype == torch.float32                     # the leaves stay fp32
        assert_rel_close(t.grad, r.grad, dtype, "grad")


def test_mixed_dtypes_are_fine_under_autocast_and_an_error_outside():
    """A half-precision activation meeting fp32 weights: cast under autocast, rejected without."""
    x, *weights = CASES["hierarchical_aggregation"][2]()
    half = x.detach().half()
    with pytest.raises(TypeError, match="share one dtype"):
        hierarchical_aggregation(half, *weights)
    with use_backend("kernel"), torch.autocast(KERNEL_DEVICE, dtype=torch.float16):
        assert hierarchical_aggregation(half, *weights).dtype == torch.float16


def test_float64_is_not_cast():
    inputs = [t.detach().double() for t in CASES["afm_pooling"][2]()]
    with torch.autocast(KERNEL_DEVICE, dtype=torch.float16):
        assert afm_pooling(*inputs).dtype == torch.float64
