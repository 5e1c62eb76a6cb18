"""The static GPU gate (bench/gpu_audit.py): its matrix, the launches it records from the
launchers, one real ahead-of-time compile for sm_90, and its verdict against the baseline.
Recording and compiling need Triton's real compiler, not the interpreter the tests run under:
they run in a subprocess without TRITON_INTERPRET, as `make gpu-audit` does."""
import json
import os
import subprocess
import sys
import textwrap

from bench import gpu_audit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


OPS = ("field_attention", "afm_pooling", "hierarchical_aggregation", "multi_function_interactions")


def kernels_of(op: str):
    """The kernels the gate audits for ``op``: its backward's several kernels, or fwd and bwd."""
    return gpu_audit.MULTI_KERNEL_BACKWARDS.get(op, ("fwd", "bwd"))


def test_ci_subset_covers_every_op_kernel_dtype_and_target():
    cases = gpu_audit.build_cases(full=False)
    assert {(c.op, c.kernel) for c in cases} == {(op, k) for op in OPS for k in kernels_of(op)}
    assert {c.dtype for c in cases} == {"fp32", "fp16"}          # TF32 and bf16: the full matrix only
    assert {c.dtype for c in gpu_audit.build_cases(full=True)} == {"fp32", "tf32", "fp16", "bf16"}
    assert {c.capability for c in cases} == {80, 90}
    assert len({c.key() for c in cases}) == len(cases)
    full = gpu_audit.build_cases(full=True)
    assert {c.key() for c in cases} <= {c.key() for c in full} and len(full) > 5 * len(cases)


def test_records_each_launchers_own_launch_and_compiles_one_for_sm90():
    proc = run_python("""
        import json
        from bench import gpu_audit
        out = {}
        for c in gpu_audit.build_cases(full=False):
            if c.dtype == "fp16" and c.capability == 90 and "attention" not in c.label():
                cfg, args = gpu_audit.record_launch(c)
                signature, constexprs, _ = gpu_audit.specialise(cfg, args)
                out[c.op + "/" + c.kernel] = dict(
                    name=cfg.kernel.__name__, grid=list(cfg.grid), maxnreg=cfg.maxnreg,
                    precision=cfg.meta.get("PRECISION"), first=signature[cfg.kernel.arg_names[0]],
                    constexprs=len(constexprs), meta=len(cfg.meta))
        case = next(c for c in gpu_audit.build_cases(full=False) if c.op == "hierarchical_aggregation"
                    and c.kernel == "fwd" and c.dtype == "fp16" and c.capability == 90)
        out["compiled"] = gpu_audit.compile_case(case)
        print(json.dumps(out))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for op in OPS:
        for kernel in kernels_of(op):
            launch = out[f"{op}/{kernel}"]
            assert launch["name"] == f"_{op}_{kernel}_kernel"
            assert launch["first"] == "*fp16" and launch["maxnreg"] and launch["constexprs"] >= launch["meta"]
            # the batch on axis 0 only; parameter-gradient kernels may add column blocks on axis 1
            assert len(launch["grid"]) in ((1, 2) if kernel == "bwd_parameters" else (1,))
            assert min(launch["grid"]) >= 1
            if op != "multi_function_interactions":                # its dots are one-hot: no PRECISION
                assert launch["precision"] == "ieee"               # fp16 operands
    compiled = out["compiled"]
    assert compiled["ok"], compiled["problems"]
    assert 16 <= compiled["regs"] <= 255 and compiled["spill_stores"] == 0
    assert 0 < compiled["smem"] < 227 * 1024 and 0 < compiled["occupancy"] <= 1


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
