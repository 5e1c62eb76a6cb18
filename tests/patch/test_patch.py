"""fastint.patch on the peers' own layers and models: the patched model computes what the unpatched
one does (forward and every gradient, on the reference backend and on the fused kernels under the
interpreter), keeps its parameters, state dict and optimizer, trains the same step by step, and
reports what it left alone."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import fastint.patch
from fastint import use_backend
from tests.helpers import KERNEL_DEVICE, assert_rel_close
from tests.patch import peers

BATCH, FIELDS = 37, 7
# float32 either way (the fused ops sum in another order than the peers' eager ops): compared
# norm-wise and elementwise as every kernel test is (tests/helpers.assert_rel_close)
RTOL, ATOL = 2e-5, 2e-6     # for small values compared elementwise only (attention scores, losses)
BACKENDS = ["reference", "kernel"]


def _device(backend: str) -> str:
    return KERNEL_DEVICE if backend == "kernel" else "cpu"


def _to(inputs, device):
    if isinstance(inputs, dict):
        return {k: v.to(device) for k, v in inputs.items()}
    if isinstance(inputs, list):
        return [v.to(device) for v in inputs]
    return inputs.to(device)


def _output(out) -> torch.Tensor:
    return out["y_pred"] if isinstance(out, dict) else out


def outputs_and_grads(module, inputs, seed: int = 1):
    """The output and ``{name: grad}`` of every trainable parameter (and of a float input) for a
    random upstream gradient; the RNG is seeded so dropout draws the same masks."""
    module.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = _output(module(inputs))
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device)
    (out * upstream).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters() if p.requires_grad}
    return out.detach(), grads


def assert_same_computation(original, patched, inputs, backend: str) -> None:
    """``patched`` (on ``backend``) gives ``original``'s output and gradients (on the reference)."""
    expected_out, expected_grads = outputs_and_grads(original, inputs)
    with use_backend(backend):
        out, grads = outputs_and_grads(patched, _to(inputs, _device(backend)))
    assert_rel_close(out, expected_out, torch.float32, "output")
    assert grads.keys() == expected_grads.keys()
    for name, expected in expected_grads.items():
        if expected is None:            # a parameter the peer's own forward does not use
            assert grads[name] is None, name
        else:                           # (a zero reference gradient fails: it would prove nothing)
            assert_rel_close(grads[name], expected, torch.float32, f"grad of {name}")


def moved(module, device: str):
    """``module`` on ``device``, with the peers' own ``device`` attribute (inputs follow it) too."""
    module = module.to(device)
    if hasattr(module, "device"):
        module.device = torch.device(device)
    return module


def patched_copy(model, backend: str, expect_replaced: int, **options):
    patched = moved(copy.deepcopy(model), _device(backend))
    report = fastint.patch.apply(patched, **options)
    assert len(report.replaced) == expect_replaced, str(report)
    return patched, report


# --- DeepCTR-Torch -------------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [1, 2, 3, 4])
@pytest.mark.parametrize("scaling", [False, True])
@pytest.mark.parametrize("use_res", [True, False])
def test_deepctr_interacting_layer_every_option(use_res, scaling, heads):
    layer = peers.deepctr().layers.InteractingLayer(12, heads, use_res=use_res, scaling=scaling)
    x = torch.randn(BATCH, FIELDS, 12, requires_grad=True)
    backends = BACKENDS if heads in (2, 3) else ["reference"]     # the interpreter is slow: a subset
    # copies first: once it has run, the layer holds a non-leaf normalized_att_scores (no deepcopy)
    for backend, patched in [(b, patched_copy(layer, b, 1)[0]) for b in backends]:
        assert_same_computation(layer, patched, x, backend)


def test_deepctr_interacting_layer_keeps_attention_scores_on_request():
    layer = peers.deepctr().layers.InteractingLayer(8, 2)
    x = torch.randn(5, FIELDS, 8)
    with torch.no_grad():
        layer(x)                                                # leaves normalized_att_scores
    expected = layer.normalized_att_scores
    quiet, _ = patched_copy(layer, "reference", 1)
    assert not hasattr(quiet, "normalized_att_scores")          # no stale scores to read
    quiet(x)
    assert not hasattr(quiet, "normalized_att_scores")
    keeping, _ = patched_copy(layer, "reference", 1, keep_attention=True)
    keeping(x)
    assert keeping.normalized_att_scores.shape == (2, 5, FIELDS, FIELDS)
    torch.testing.assert_close(keeping.normalized_att_scores, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deepctr_afm_layer_with_dropout_on_the_pooled_vector(backend):
    layer = peers.deepctr().layers.AFMLayer(8, attention_factor=6, dropout_rate=0.3)
    torch.nn.init.normal_(layer.attention_b)                    # non-zero, so its gradient is tested
    embeddings = [torch.randn(BATCH, 1, 8, requires_grad=True) for _ in range(FIELDS)]
    patched, _ = patched_copy(layer, backend, 1, keep_attention=True)
    assert_same_computation(layer, patched, embeddings, backend)
    torch.testing.assert_close(patched.normalized_att_score.cpu(), layer.normalized_att_score,
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["AutoInt", "AFM"])
def test_deepctr_models(name, backend):
    model = peers.deepctr_model(name, FIELDS)
    patched, _ = patched_copy(model, backend, 2 if name == "AutoInt" else 1)
    assert_same_computation(model, patched, peers.deepctr_inputs(BATCH, FIELDS), backend)


def test_deepctr_afm_l2_on_the_attention_weight_keeps_working():
    model = peers.deepctr_model("AFM", FIELDS, l2_reg_att=0.5)
    patched, _ = patched_copy(model, "reference", 1)
    assert any(patched.fm.attention_W is p for group in patched.regularization_weight for p in group[0])
    torch.testing.assert_close(patched.get_regularization_loss(), model.get_regularization_loss())
    patched.get_regularization_loss().backward()
    # d/dW (0.5 ||W||^2) = W: the term reaches the Parameter the fused op uses
    torch.testing.assert_close(patched.fm.attention_W.grad, patched.fm.attention_W.detach())


# --- FuxiCTR model zoo ---------------------------------------------------------------------------

AUTOINT_CONFIGS = {   # attention_dim 8 == embedding_dim: identity residual; 12: projected
    "identity": dict(attention_dim=8, num_heads=2),
    "identity-scale-ln": dict(attention_dim=8, num_heads=2, use_scale=True, layer_norm=True),
    "project": dict(attention_dim=12, num_heads=3, use_scale=True),
    "project-ln": dict(attention_dim=12, num_heads=2, layer_norm=True),
    # one layer: without a residual a second layer's values are near-uniform averages, its Q/K
    # gradients ~1e-22, and comparing them would prove nothing
    "no-residual": dict(attention_dim=8, num_heads=2, use_residual=False, attention_layers=1),
}


@pytest.mark.parametrize("config", sorted(AUTOINT_CONFIGS))
def test_fuxictr_autoint(config):
    hparams = {"attention_layers": 2, **AUTOINT_CONFIGS[config]}
    model = peers.fuxictr_model("AutoInt", FIELDS, dnn_hidden_units=[16], **hparams)
    if model.self_attention[0].layer_norm is not None:        # non-trivial affine, so it is tested
        for block in model.self_attention:
            torch.nn.init.normal_(block.layer_norm.weight, 1.0, 0.2)
            torch.nn.init.normal_(block.layer_norm.bias, 0.0, 0.2)
    backends = BACKENDS if config in ("identity-scale-ln", "project") else ["reference"]
    layers = hparams["attention_layers"]
    for backend, patched in [(b, patched_copy(model, b, layers)[0]) for b in backends]:
        assert_same_computation(model, patched, peers.fuxictr_inputs(BATCH, FIELDS), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fuxictr_afm(backend):
    model = peers.fuxictr_model("AFM", FIELDS, attention_dim=6, attention_dropout=[0, 0.2])
    patched, _ = patched_copy(model, backend, 1)
    assert_same_computation(model, patched, peers.fuxictr_inputs(BATCH, FIELDS), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("heads", [1, 2])
def test_fuxictr_interhat_any_heads_exactly_as_fuxictr(heads, backend):
    """The aggregation is fused; the attention block (and its head split for H > 1) stays FuxiCTR's."""
    model = peers.fuxictr_model("InterHAt", FIELDS, order=3, hidden_dim=12, attention_dim=4,
                                num_heads=heads, hidden_units=[16])
    with pytest.warns(UserWarning, match="InterHAt MultiHeadSelfAttention.*W_res"):
        patched, report = patched_copy(model, backend, 1)
    assert [s.path for s in report.skipped] == ["multi_head_attention"]
    assert ("head split" in report.skipped[0].reason) == (heads > 1)
    assert_same_computation(model, patched, peers.fuxictr_inputs(BATCH, FIELDS), backend)


def test_fuxictr_configurations_the_ops_cannot_express_are_left_alone_with_a_warning():
    autoint = peers.fuxictr_model("AutoInt", FIELDS, attention_dim=8, num_heads=2, net_dropout=0.1)
    with pytest.warns(UserWarning, match=r"dropout on the attention probabilities \(dropout_rate=0.1\)"):
        report = fastint.patch.apply(autoint)
    assert not report.replaced and len(report.skipped) == 2
    assert all("forward" not in m.__dict__ for m in autoint.modules())
    afm = peers.fuxictr_model("AFM", FIELDS, use_attention=False)
    with pytest.warns(UserWarning, match="use_attention=False"):
        assert not fastint.patch.apply(afm).replaced
    afm = peers.fuxictr_model("AFM", FIELDS, attention_dropout=[0.5, 0])
    with pytest.warns(UserWarning, match=r"attention_dropout\[0\]=0.5"):
        assert not fastint.patch.apply(afm).replaced


# --- what the patch keeps ------------------------------------------------------------------------

def _peer_model(library: str, name: str):
    if library == "deepctr":
        return peers.deepctr_model(name, FIELDS)
    hparams = {"AutoInt": dict(attention_dim=12, num_heads=2, layer_norm=True, dnn_hidden_units=[16]),
               "AFM": dict(attention_dim=6), "InterHAt": dict(order=2, hidden_dim=12, hidden_units=[16])}
    return peers.fuxictr_model(name, FIELDS, **hparams[name])


def _inputs(library: str, batch: int = BATCH):
    return (peers.deepctr_inputs if library == "deepctr" else peers.fuxictr_inputs)(batch, FIELDS)


MODELS = [("deepctr", "AutoInt"), ("deepctr", "AFM"), ("fuxictr", "AutoInt"), ("fuxictr", "AFM"),
          ("fuxictr", "InterHAt")]


@pytest.mark.parametrize("library,name", MODELS)
def test_parameters_state_dict_and_revert(library, name):
    model = _peer_model(library, name)
    parameters = dict(model.named_parameters())
    keys = list(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # InterHAt's attention is reported
        report = fastint.patch.apply(model)
        again = fastint.patch.apply(model)
    assert report.replaced and {s.reason for s in again.skipped} >= {"already patched"}
    assert all(p is parameters[n] for n, p in model.named_parameters())   # the same objects
    assert list(model.state_dict()) == keys
    # a checkpoint saved patched loads unpatched, and back
    twin = _peer_model(library, name)
    twin.load_state_dict(model.state_dict())
    x = _inputs(library)
    torch.testing.assert_close(_output(model(x)), _output(twin(x)), rtol=RTOL, atol=ATOL)
    assert fastint.patch.revert(model) == len(report.replaced)
    assert all(fastint.patch._core.PATCH_ATTRIBUTE not in m.__dict__ and "forward" not in m.__dict__
               for m in model.modules())
    assert fastint.patch.revert(model) == 0


def test_apply_rejects_unknown_libraries():
    with pytest.raises(ValueError, match="unknown libraries"):
        fastint.patch.apply(torch.nn.Linear(2, 2), libraries=("recbole",))
    assert not fastint.patch.apply(torch.nn.Linear(2, 2)).replaced


# --- convergence, in Liger-Kernel's style --------------------------------------------------------

STEPS = {"reference": 8, "kernel": 2}       # the interpreter is slow
# every model on the reference backend, and each fused op once on the kernels
CONVERGENCE = ([(*m, "reference") for m in MODELS]
               + [("deepctr", "AutoInt", "kernel"), ("deepctr", "AFM", "kernel"), ("fuxictr", "InterHAt", "kernel")])


def _train(model, library: str, steps: int) -> list[float]:
    """``steps`` of the peer's own training step (its loss, regulariser and optimizer, built before
    any patch) on batches drawn from a fixed seed; the losses."""
    batches = torch.Generator().manual_seed(7)
    losses = []
    for _ in range(steps):
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=batches)))
        x, y = _inputs(library, 16), torch.randint(0, 2, (16,), generator=batches).float()
        if library == "deepctr":                      # the body of deepctr's BaseModel.fit
            loss = model.loss_func(model(x).squeeze(-1), y, reduction="sum")
            total = loss + model.get_regularization_loss() + model.aux_loss
            model.optim.zero_grad()
            total.backward()
            model.optim.step()
        else:
            model._max_gradient_norm = 10.0           # what BaseModel.fit sets (its default)
            loss = model.train_step({**x, "label": y})
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("library,name,backend", CONVERGENCE)
def test_training_steps_match_the_unpatched_model(library, name, backend):
    torch.manual_seed(3)
    model = _peer_model(library, name)
    if library == "deepctr":
        model.compile("adam", "binary_crossentropy")
    patched = moved(copy.deepcopy(model), _device(backend))  # its own optimizer, over its own parameters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert fastint.patch.apply(patched).replaced
    expected = _train(model, library, STEPS[backend])
    with use_backend(backend):
        losses = _train(patched, library, STEPS[backend])
    assert expected[-1] != expected[0]
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-4, atol=1e-5)
    for (name_, p), q in zip(model.named_parameters(), patched.parameters()):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-4, atol=1e-5, msg=lambda m: f"{name_}: {m}")
