"""The comparison helpers catch what they exist for: an unwritten output element (NaN poisoning)
and a single wrong element that the norm-wise bound alone lets through."""
import pytest
import torch

from tests.helpers import assert_rel_close, check_kernel_against_reference, poisoned_outputs, rel_err


def test_poisoned_outputs_fill_new_tensors_with_nan_and_restore():
    with poisoned_outputs():
        assert torch.isnan(torch.empty(4)).all() and torch.isnan(torch.empty_like(torch.ones(3))).all()
        assert torch.isnan(torch.ones(2).new_empty(5, dtype=torch.float16)).all()
    assert not torch.are_deterministic_algorithms_enabled()


def test_an_unwritten_output_element_fails_the_comparison():
    def leaky(x):
        """Writes every output element but the last (as a kernel with a bad mask would)."""
        out = torch.empty_like(x)
        out.view(-1)[:-1] = 2 * x.reshape(-1)[:-1]
        return out

    x = torch.randn(6, 5)
    with pytest.raises(AssertionError, match=r"element \[5, 4\]: nan"):
        check_kernel_against_reference(leaky, lambda t: 2 * t, [x.requires_grad_()], (torch.randn(6, 5),),
                                       torch.float32, ("out",), ("x",))


def test_one_wrong_element_fails_though_the_norm_bound_passes():
    """46k fp16 elements with one element off by 1x the RMS: norm-wise error ~1/sqrt(N) = 4.7e-3
    is under fp16's 5e-3, the elementwise check names the element."""
    ref = torch.randn(46_000, dtype=torch.float64)
    out = ref.clone()
    out[12_345] += ref.norm() / ref.numel() ** 0.5
    assert rel_err(out, ref) < 5e-3
    with pytest.raises(AssertionError, match=r"element \[12345\]"):
        assert_rel_close(out, ref, torch.float16, "out")
    assert_rel_close(ref * (1 + 1e-4), ref, torch.float16, "scaled")    # uniform small errors pass
