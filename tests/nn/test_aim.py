"""AIM/AutoFIS modules against hand-written formulas: the gated multi-function interactions (batch
norm, gates, masks, fixed gates), GRDA driving the gates of useless entries to exact zeros, the
dimension gates and the function-wise embedding with pruned dimensions (reduced state dict)."""
import pytest
import torch

from fastint import Batch, Field, Schema
from fastint.nn.aim import DimensionGates, FunctionWiseEmbedding, MultiFunctionInteraction
from fastint.optim import GRDA

FUNCTIONS = ("inner", "kernel", "scalar", "outer")
PAIRS = [[0, 1], [0, 3], [1, 2], [2, 4]]
TRIPLES = [[0, 1, 2], [1, 3, 4]]


def by_hand(e, layer, training: bool):
    """``sum_{f,q} mask alpha BN(Z)`` with every function written out, in float64."""
    e = e.double()
    columns = []
    for f, name in enumerate(layer.functions):
        table = e[:, f if e.shape[1] > 1 else 0]
        for q, fields in enumerate(layer.tuples.tolist()):
            rows = [table[:, m] for m in fields]
            prod = torch.stack(rows).prod(0)
            z = {"inner": lambda: prod.sum(-1),
                 "kernel": lambda: (prod * layer.kappa[q].double()).sum(-1),
                 "scalar": lambda: layer.s[q].double() * prod.sum(-1),
                 "outer": lambda: torch.stack([r @ layer.w[i].double() for i, r in enumerate(rows)]).prod(0)}[name]()
            columns.append(z * layer.mask[f, q])
    z = torch.stack(columns, 1)
    if training:
        mean, var = z.mean(0), z.var(0, unbiased=False)
    else:
        mean, var = layer.running_mean.double(), layer.running_var.double()
    return ((z - mean) / torch.sqrt(var + 1e-3)) @ (layer.alpha.double() * layer.mask.flatten())


@pytest.mark.parametrize("tuples, tables", [(PAIRS, 4), (TRIPLES, 1)])
def test_matches_the_formula_in_training_and_eval(tuples, tables):
    layer = MultiFunctionInteraction(5, 6, tuples, FUNCTIONS, gates=torch.rand(4, len(tuples)) + 0.1)
    with torch.no_grad():  # kernels of order 1 so that every function matters
        layer.kappa.normal_()
        layer.s.normal_()
    e = torch.randn(33, tables, 5, 6)
    out = layer(e)
    torch.testing.assert_close(out.double(), by_hand(e, layer, training=True), rtol=1e-5, atol=1e-5)
    z = layer.interactions(e).flatten(1).double()     # running statistics moved by momentum 0.01
    torch.testing.assert_close(layer.running_mean.double(), 0.01 * z.mean(0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(layer.running_var.double(), 0.99 + 0.01 * z.var(0), rtol=1e-5, atol=1e-7)
    layer.eval()
    torch.testing.assert_close(layer(e).double(), by_hand(e, layer, training=False), rtol=1e-5, atol=1e-5)


def test_parameters_and_their_initialisation():
    layer = MultiFunctionInteraction(5, 8, PAIRS, FUNCTIONS)
    assert layer.kappa.shape == (4, 8) and layer.s.shape == (4,) and layer.w.shape == (2, 8)
    assert layer.kappa.abs().max() <= 2e-3 and 2e-4 < layer.kappa.std() < 2e-3      # trunc-normal, std 1e-3
    assert layer.s.abs().max() <= 2e-3
    assert torch.equal(layer.alpha, torch.full((16,), 0.6))
    inner_only = MultiFunctionInteraction(5, 8, PAIRS, ("inner",))
    assert inner_only.kappa is None and inner_only.s is None and inner_only.w is None
    assert [n for n, _ in inner_only.named_parameters()] == ["alpha"]


def test_inactive_entries_contribute_nothing():
    mask = torch.tensor([[True, False, True, True], [False, False, True, False]])
    layer = MultiFunctionInteraction(5, 6, PAIRS, ("inner", "outer"), mask=mask)
    e = torch.randn(17, 2, 5, 6, requires_grad=True)
    out = layer(e)
    torch.testing.assert_close(out.double(), by_hand(e, layer, training=True), rtol=1e-5, atol=1e-5)
    (out * torch.randn(17)).sum().backward()  # (a plain sum has zero gradient: BN outputs sum to 0)
    assert torch.all(layer.alpha.grad.view(2, 4)[~mask] == 0) and torch.all(layer.alpha.grad.view(2, 4)[mask] != 0)
    # tuple 1 (fields 0, 3) is inactive in both functions: field 3 gets no gradient at all; field
    # 4 (tuple (2, 4), active in inner only) none in the outer function's table
    assert torch.all(e.grad[:, :, 3] == 0) and torch.all(e.grad[:, 1, 4] == 0) and torch.all(e.grad[:, 0, 4] != 0)
    # the same module without the inactive entries (gates 0 there) gives the same output
    gates = torch.where(mask, layer.alpha.detach().view(2, 4), 0.0)
    holes = MultiFunctionInteraction(5, 6, PAIRS, ("inner", "outer"), gates=gates)
    holes.w.data.copy_(layer.w.data)
    torch.testing.assert_close(holes(e), out)


def test_fixed_gates_are_a_buffer():
    gates = torch.tensor([[0.5, 0.0, -0.2, 1.0]])
    layer = MultiFunctionInteraction(5, 4, PAIRS, ("inner",), gates=gates, fixed_gates=True)
    assert not any(n == "alpha" for n, _ in layer.named_parameters())
    assert torch.equal(layer.state_dict()["alpha"], gates.flatten())
    assert layer.mask.tolist() == [[True, False, True, True]]
    torch.testing.assert_close(layer.gate_matrix(), gates)


def test_a_single_sample_in_training_uses_the_running_statistics():
    layer = MultiFunctionInteraction(5, 4, PAIRS, ("inner",))
    e = torch.randn(1, 1, 5, 4)
    expected = by_hand(e, layer, training=False)
    torch.testing.assert_close(layer(e).double(), expected)
    assert torch.equal(layer.running_mean, torch.zeros(4))


def test_bad_arguments():
    with pytest.raises(ValueError, match="list with p in 2..4"):
        MultiFunctionInteraction(5, 4, [[0, 1, 2, 3, 4]], ("inner",))
    with pytest.raises(ValueError, match="index fields 0..4"):
        MultiFunctionInteraction(5, 4, [[0, 5]], ("inner",))
    with pytest.raises(ValueError, match=r"gates must have shape \[F, P\] = \[1, 4\]"):
        MultiFunctionInteraction(5, 4, PAIRS, ("inner",), gates=torch.ones(2, 4))


def test_grda_drives_the_useless_gates_to_exact_zeros():
    """Fixed inputs whose target is the (normalised) inner product of fields 0 and 1 alone: GRDA
    on the gates keeps that entry and prunes the others to exactly 0. Measured (seeds 0, 1, 2; 300
    steps): the kept gate ends at 0.97-1.01, the other 11 are exactly 0 from step 20-28 on (they
    only add noise, so their gradient pushes them down); the threshold c lr^1.3 t^0.8 ends at 0.58."""
    torch.manual_seed(0)
    layer = MultiFunctionInteraction(4, 8, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]], ("inner", "outer"))
    grda = GRDA([layer.alpha], lr=0.1, c=0.12, mu=0.8)
    adam = torch.optim.Adam([layer.w], lr=1e-2)
    e = torch.randn(4096, 2, 4, 8)
    signal = (e[:, 0, 0] * e[:, 0, 1]).sum(-1)
    target = (signal - signal.mean()) / signal.std() + 0.3 * torch.randn(4096)
    for step in range(300):
        idx = torch.randint(0, 4096, (256,))
        loss = (layer(e[idx]) - target[idx]).pow(2).mean()
        grda.zero_grad()
        adam.zero_grad()
        loss.backward()
        grda.step()
        adam.step()
    gates = layer.gate_matrix()
    assert gates[0, 0] > 0.5                                   # inner (0, 1): the signal
    others = torch.cat([gates[0, 1:], gates[1]])
    assert torch.count_nonzero(others) == 0


def test_dimension_gates_broadcast_over_tables():
    gates = DimensionGates(3, 4)
    assert torch.equal(gates.beta, torch.full((3, 4), 0.6))
    with torch.no_grad():
        gates.beta.copy_(torch.tensor([[1.0, 0, 2, 0], [0, 0, 0, 0], [3, 3, 3, 3]]))
    e = torch.randn(5, 2, 3, 4)
    out = gates(e)
    for t in range(2):
        torch.testing.assert_close(out[:, t], e[:, t] * gates.beta)
    assert gates.kept_positions() == [[0, 2], [], [0, 1, 2, 3]]


SCHEMA = Schema((Field("a", "categorical", 5), Field("x", "numeric"), Field("m", "multi", 4),
                 Field("b", "categorical", 3)))


def batch(n: int) -> Batch:
    return Batch(categorical=torch.stack([torch.randint(-1, 6, (n,)), torch.randint(0, 3, (n,))], 1),
                 numeric=torch.randn(n, 1), multi=torch.randint(-1, 5, (n, 1, 3)))


def test_function_wise_embedding_is_one_lookup_reshaped():
    emb = FunctionWiseEmbedding(SCHEMA, 4, tables=3)
    b = batch(7)
    e = emb(b)
    assert e.shape == (7, 3, 4, 4)
    flat = emb.embedding(b)                                   # [B, M, T*d]
    for t in range(3):
        torch.testing.assert_close(e[:, t], flat[:, :, 4 * t:4 * (t + 1)])
    assert emb.kept_columns() is None


def test_pruned_dimensions_store_only_the_kept_entries():
    dims = [[0, 2], [], [1, 2, 3], [3]]
    emb = FunctionWiseEmbedding(SCHEMA, 4, tables=2, dims=dims)
    rows = [6, 1, 5, 4]                                       # vocab + OOV row; one row for a numeric field
    state = emb.state_dict()
    assert list(state) == ["embedding.parametrizations.weight.original"]
    assert state["embedding.parametrizations.weight.original"].numel() == 2 * sum(
        r * len(k) for r, k in zip(rows, dims))               # 2 tables x (12 + 0 + 15 + 4) = 62
    b = batch(9)
    e = emb(b)
    keep = torch.zeros(4, 4, dtype=torch.bool)
    for m, kept in enumerate(dims):
        keep[m, kept] = True
    assert torch.all(e[:, :, ~keep] == 0) and torch.count_nonzero(e[:, :, keep]) > 0.9 * e[:, :, keep].numel()
    e.sum().backward()
    assert emb.embedding.parametrizations.weight.original.grad.shape == (62,)
    clone = FunctionWiseEmbedding(SCHEMA, 4, tables=2, dims=dims)
    clone.load_state_dict(state)
    torch.testing.assert_close(clone(b), e.detach())
    cols = emb.kept_columns()                                  # (t, m, k) order of E.flatten(1)
    torch.testing.assert_close(e.flatten(1)[:, cols].count_nonzero(), e.count_nonzero())
    assert cols.numel() == 2 * 6 and emb.kept_columns(1).tolist() == [0, 2, 9, 10, 11, 15]


def test_bad_dims():
    with pytest.raises(ValueError, match="one list of kept positions per field"):
        FunctionWiseEmbedding(SCHEMA, 4, dims=[[0]])
    with pytest.raises(ValueError, match=r"dims\[1\] must list distinct positions in 0..3"):
        FunctionWiseEmbedding(SCHEMA, 4, dims=[[0], [4], [], []])
