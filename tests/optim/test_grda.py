"""GRDA against a hand-computed sequence, its exact zeros, its state dict and its errors."""
import math

import pytest
import torch

from fastint.optim import GRDA

W0 = [0.5, -0.2, 0.01]
GRADS = [[1.0, -1.0, 0.0], [-2.0, 0.5, 0.1], [0.0, 0.0, 0.0]]
LR, C, MU = 0.1, 0.5, 0.6


def _run(steps, optimizer_factory=lambda p: GRDA([p], lr=LR, c=C, mu=MU)):
    w = torch.tensor(W0, dtype=torch.float64, requires_grad=True)
    opt = optimizer_factory(w)
    values = []
    for g in steps:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        values.append(w.detach().clone())
    return values


def test_matches_the_closed_form_step_by_step():
    """w_t = sign(a) max(|a| - l1, 0) with a = w0 - lr sum_{s<=t} g_s, l1 = c lr^(1/2+mu) (t+1)^mu."""
    values = _run(GRADS)
    for t, w in enumerate(values):
        for i in range(3):
            a = W0[i] - LR * sum(GRADS[s][i] for s in range(t + 1))
            l1 = C * LR ** (0.5 + MU) * (t + 1) ** MU
            expected = math.copysign(max(abs(a) - l1, 0.0), a)
            assert w[i].item() == pytest.approx(expected, abs=1e-15), (t, i)
    # step 0 by hand: acc = [0.4, -0.1, 0.01], l1 = 0.5 * 0.1^1.1 = 0.0397164
    torch.testing.assert_close(values[0], torch.tensor([0.3602836, -0.0602836, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-7)
    assert values[0][2].item() == 0.0 and values[2][2].item() == 0.0        # exactly zero


def test_drives_noise_to_exact_zeros_and_keeps_the_signal():
    torch.manual_seed(0)
    gates = torch.nn.Parameter(torch.full((1000,), 0.6))
    signal = torch.zeros(1000)
    signal[:50] = -1.0                                  # a consistent gradient: these gates grow
    opt = GRDA([gates], lr=0.1, c=0.5, mu=0.9)      # threshold at step 300: 3.4; noise walk: std 0.87
    for _ in range(300):
        gates.grad = signal + 0.5 * torch.randn(1000)
        opt.step()
    zeros = (gates.detach() == 0).float()
    assert zeros[50:].mean() > 0.95                     # noise-only gates pruned to exact zeros (measured 0.999)
    assert (gates.detach()[:50] > 1.0).all()            # the signal survives and grows


def test_state_dict_resumes_the_same_trajectory():
    straight = _run(GRADS)
    w = torch.tensor(W0, dtype=torch.float64, requires_grad=True)
    opt = GRDA([w], lr=LR, c=C, mu=MU)
    for g in GRADS[:2]:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    resumed_w = w.detach().clone().requires_grad_()
    resumed = GRDA([resumed_w], lr=LR, c=C, mu=MU)
    resumed.load_state_dict(opt.state_dict())
    resumed_w.grad = torch.tensor(GRADS[2], dtype=torch.float64)
    resumed.step()
    assert torch.equal(resumed_w.detach(), straight[2])


def test_parameters_without_gradients_are_left_alone():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = GRDA([a, b], lr=0.1, c=0.0, mu=0.5)
    a.grad = torch.ones(2)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.9))
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state


@pytest.mark.parametrize("kwargs, message", [(dict(lr=0.0), "lr must be > 0"), (dict(c=-1.0), "c must be >= 0"),
                                             (dict(mu=1.0), r"mu must be in \[0, 1\)")])
def test_rejects_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GRDA([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_rejects_sparse_gradients():
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.sparse_coo_tensor([[0]], [1.0], (3,), check_invariants=True)
    with pytest.raises(RuntimeError, match="sparse gradients"):
        GRDA([w]).step()
