"""InteractingLayer: the variant presets build the documented structure; kernel path == reference."""
import dataclasses

import pytest
import torch

from fastint import use_backend
from fastint.nn.interacting import VARIANTS, InteractingLayer
from fastint.reference.field_attention import field_attention as reference
from tests.helpers import KERNEL_DEVICE, assert_rel_close

PARAMS = ("w_qkv", "b_qkv", "w_res", "b_res", "ln_weight", "ln_bias")


def present(layer):
    return {name for name in PARAMS if getattr(layer, name) is not None}


@pytest.mark.parametrize("variant, in_dim, expected, options", [
    ("tf", 16, {"w_qkv", "b_qkv", "w_res", "b_res", "ln_weight", "ln_bias"},
     dict(scale=None, qkv_relu=True, residual="project", res_relu=True, out_relu=True, layer_norm="after")),
    ("paper", 16, {"w_qkv", "w_res"},
     dict(scale=1.0, qkv_relu=False, residual="project", res_relu=False, out_relu=True, layer_norm="none")),
    ("deepctr", 16, {"w_qkv", "w_res"},
     dict(scale=1.0, qkv_relu=False, residual="project", res_relu=False, out_relu=True, layer_norm="none")),
    ("fuxictr", 16, {"w_qkv"},                       # FuxiCTR's default: layer_norm=False
     dict(scale=1.0, qkv_relu=False, residual="identity", out_relu=True, layer_norm="none")),
    ("fuxictr", 12, {"w_qkv", "w_res"}, dict(residual="project", layer_norm="none")),
])
def test_presets_structure(variant, in_dim, expected, options):
    layer = InteractingLayer(in_dim, 8, 2, variant=variant)
    assert present(layer) == expected
    assert layer.w_qkv.shape == (in_dim, 48)
    for key, value in options.items():
        assert layer.config[key] == value, key
    y, a = layer(torch.randn(5, 7, in_dim), return_attention=True)
    assert y.shape == (5, 7, 16) and a.shape == (5, 2, 7, 7)


def test_initialisation():
    tf = InteractingLayer(16, 8, 2, variant="tf")
    assert not tf.b_qkv.any() and not tf.b_res.any()
    assert torch.equal(tf.ln_weight, torch.ones(16)) and not tf.ln_bias.any()
    bound = (6 / (16 + 16)) ** 0.5                          # Xavier-uniform per [16, 16] projection
    assert tf.w_qkv.abs().max() <= bound and tf.w_qkv.abs().max() > 0.8 * bound
    deepctr = InteractingLayer(64, 32, 2, variant="deepctr")
    assert abs(float(deepctr.w_qkv.detach().std()) - 0.05) < 0.005


def test_fuxictr_layer_norm_override():
    """FuxiCTR's ``layer_norm=True`` is ``layer_norm="before"``: ``relu(LN(O + x))``."""
    layer = InteractingLayer(16, 8, 2, variant="fuxictr", layer_norm="before")
    assert present(layer) == {"w_qkv", "ln_weight", "ln_bias"}
    with torch.no_grad():
        layer.ln_weight.normal_(1.0, 0.2)
        layer.ln_bias.normal_(0.0, 0.2)
    pre_activation = InteractingLayer(16, 8, 2, variant="fuxictr", out_relu=False)   # Z = O + x
    pre_activation.w_qkv.data.copy_(layer.w_qkv.data)
    x = torch.randn(5, 7, 16)
    z = pre_activation(x)
    want = torch.relu(torch.nn.functional.layer_norm(z, (16,), layer.ln_weight, layer.ln_bias, 1e-5))
    torch.testing.assert_close(layer(x), want)


def test_overrides_and_errors():
    layer = InteractingLayer(16, 8, 2, variant="tf", residual="none", out_relu=False, layer_norm="none")
    assert present(layer) == {"w_qkv", "b_qkv"}
    assert present(InteractingLayer(16, 8, 2, variant="tf", ln_affine=False)) == {"w_qkv", "b_qkv", "w_res", "b_res"}
    with pytest.raises(ValueError, match="unknown variant"):
        InteractingLayer(16, 8, 2, variant="bert")
    with pytest.raises(TypeError, match="unknown InteractingLayer options"):
        InteractingLayer(16, 8, 2, dropout=0.1)
    with pytest.raises(ValueError, match='"deepctr" needs head_dim'):
        InteractingLayer(16, 4, 2, variant="deepctr")
    assert set(VARIANTS) == {"tf", "paper", "deepctr", "fuxictr"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kernel_path_matches_reference(variant):
    """Forward + backward of the layer on the kernel backend vs the float64 reference."""
    layer = InteractingLayer(16, 8, 2, variant=variant).to(KERNEL_DEVICE)
    with torch.no_grad():                                   # non-trivial biases and LayerNorm affine
        for p in (layer.b_qkv, layer.b_res, layer.ln_bias):
            if p is not None:
                p.normal_(std=0.1)
    x = torch.randn(19, 7, 16, device=KERNEL_DEVICE, requires_grad=True)
    with use_backend("kernel"):
        y, a = layer(x, return_attention=True)
        (y.square().sum() + a.sum()).backward()
    params = [getattr(layer, n) for n in ("w_qkv", "b_qkv", "w_res", "b_res", "ln_weight", "ln_bias")]
    ref_leaves = [None if p is None else p.detach().cpu().double().requires_grad_() for p in [x] + params]
    y_ref, a_ref = reference(*ref_leaves, return_attention=True, **dataclasses.asdict(layer.options))
    (y_ref.square().sum() + a_ref.sum()).backward()
    assert_rel_close(y, y_ref, torch.float32, "Y")
    assert_rel_close(a, a_ref, torch.float32, "A")
    for p, r in zip([x] + params, ref_leaves):
        if p is not None:
            assert_rel_close(p.grad, r.grad, torch.float32, "grad")


def test_state_dict_round_trip():
    layer = InteractingLayer(16, 8, 2, variant="tf")
    other = InteractingLayer(16, 8, 2, variant="tf")
    other.load_state_dict(layer.state_dict())
    x = torch.randn(3, 4, 16)
    torch.testing.assert_close(other(x), layer(x))
