"""The static GPU gate (bench/gpu_audit.py): its matrix, the launches it records from the
launchers, one real ahead-of-time compile for sm_90, and its verdict against the baseline."""
import json
import os

import pytest

gpu_audit = pytest.importorskip("bench.gpu_audit")
from triton.backends import backends  # noqa: E402

needs_nvidia_backend = pytest.mark.skipif("nvidia" not in backends, reason="triton without its NVIDIA backend")


def test_ci_subset_covers_every_op_kernel_dtype_and_target():
    cases = gpu_audit.build_cases(full=False)
    assert {(c.op, c.kernel) for c in cases} == {
        (op, k) for op in ("field_attention", "afm_pooling", "hierarchical_aggregation") for k in ("fwd", "bwd")}
    assert {c.dtype for c in cases} == {"fp32", "tf32", "fp16", "bf16"}
    assert {c.capability for c in cases} == {80, 90}
    assert len({c.key() for c in cases}) == len(cases)
    full = gpu_audit.build_cases(full=True)
    assert {c.key() for c in cases} <= {c.key() for c in full} and len(full) > 5 * len(cases)


@pytest.mark.parametrize("op", ["field_attention", "afm_pooling", "hierarchical_aggregation"])
@pytest.mark.parametrize("kernel", ["fwd", "bwd"])
def test_records_the_launchers_own_launch(op, kernel):
    case = next(c for c in gpu_audit.build_cases(full=False)
                if c.op == op and c.kernel == kernel and c.dtype == "bf16" and c.capability == 90)
    cfg, args = gpu_audit.record_launch(case)
    assert cfg.kernel.__name__ == f"_{op}_{kernel}_kernel"
    assert len(cfg.grid) == 1 and cfg.grid[0] >= 1 and cfg.maxnreg is not None
    assert cfg.meta["PRECISION"] == "ieee"                   # bf16 operands
    signature, constexprs, _ = gpu_audit.specialise(cfg, args)
    assert signature[cfg.kernel.arg_names[0]] == "*bf16"
    assert len(constexprs) >= len(cfg.meta)


@needs_nvidia_backend
def test_compiles_a_kernel_for_sm90_and_reads_ptxas():
    case = next(c for c in gpu_audit.build_cases(full=False)
                if c.op == "hierarchical_aggregation" and c.kernel == "fwd" and c.dtype == "fp16"
                and c.capability == 90)
    result = gpu_audit.compile_case(case)
    assert result["ok"], result["problems"]
    assert 16 <= result["regs"] <= 255 and result["spill_stores"] == 0 and 0 < result["smem"] < 227 * 1024
    assert 0 < result["occupancy"] <= 1


def test_verdict_tolerates_only_baselined_spills(capsys):
    spill = {"ok": False, "regs": 255, "problems": ["spills 8/8 B"]}
    broken = {"ok": False, "problems": ["does not compile: OutOfResources"]}
    fine = {"ok": True, "regs": 100, "problems": []}
    assert gpu_audit.verdict({"a": spill, "b": fine}, {"a"}) == 0
    assert gpu_audit.verdict({"a": spill}, set()) == 1                       # a new spill
    assert gpu_audit.verdict({"b": broken}, {"b"}) == 1                      # never tolerated
    assert gpu_audit.verdict({"b": fine}, {"b"}) == 1                        # baseline must shrink
    assert "PASSES NOW" in capsys.readouterr().err


def test_committed_baseline_names_only_known_cases():
    path = os.path.join(os.path.dirname(gpu_audit.__file__), "gpu_audit_baseline.json")
    with open(path) as f:
        baseline = json.load(f)
    keys = {c.key() for c in gpu_audit.build_cases(full=False)}
    assert baseline == sorted(baseline) and set(baseline) <= keys
