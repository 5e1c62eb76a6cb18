"""Static GPU gate: every fastint Triton kernel, at the launch configuration its launcher picks,
compiled ahead of time for sm_90 (H100/H200) and sm_80 (A100) with Triton's compiler and ptxas.
No GPU is needed.

For each case (op, kernel, shape, dtype, target) the op's own launcher (``kernels/<op>.py:
forward / backward``) runs on ``meta`` tensors (no memory, never read) with ``target_of``
returning the GPU target and ``LaunchConfig.launch`` recording instead of launching, so the
meta-parameters, ``num_warps`` / ``num_stages`` and the runtime arguments are exactly what a CUDA
launch would use. The recorded launch is specialised as Triton's JIT does it (dtypes, i32/i64,
16-divisibility, ``== 1`` constants) and compiled with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", cap, 32))``; ptxas reports registers and spills.

A case FAILS when the kernel does not compile, needs more shared memory per program than the
architecture allows (sm_90: 227 KiB, sm_80: 163 KiB), or spills registers to local memory.

With ``--baseline FILE`` (CI) the known spilling or overflowing cases listed there are reported but
tolerated; the run fails on any other failure, on any kernel that does not compile (never
tolerated), and on a listed case that now passes (remove it: the baseline only shrinks).
``--write-baseline FILE`` records the current spill/overflow failures.

    python -m bench.gpu_audit                 # the CI subset (the papers' configurations)
    python -m bench.gpu_audit --full          # the whole matrix
    python -m bench.gpu_audit --full --out bench/results/static-gpu-audit-DATE.md

Results are cached per case under ``build/gpu-audit`` keyed by the kernel sources and the Triton
version, so a re-run compiles only what changed. Run it as its own process (``python -m``): with
``TRITON_INTERPRET=1`` set before Triton was imported the kernels cannot be compiled.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import datetime
import hashlib
import io
import itertools
import json
import math
import os
import re
import sys
import time
from unittest import mock

if __name__ == "__main__":          # before triton is imported: the real compiler, not the
    os.environ.pop("TRITON_INTERPRET", None)   # interpreter (whose kernels cannot be compiled)

import torch  # noqa: E402
import triton  # noqa: E402

KERNELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
CACHE_DIR = os.path.join(os.path.dirname(KERNELS_DIR), "build", "gpu-audit")


@dataclasses.dataclass(frozen=True)
class Gpu:
    """An architecture the gate compiles for: name, capability, SMs and its limits."""
    name: str
    capability: int
    sm_count: int
    smem_per_block: int          # opt-in maximum dynamic shared memory of one program
    smem_per_sm: int
    registers_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32


GPUS = {90: Gpu("H100/H200", 90, 132, 227 * 1024, 228 * 1024),
        80: Gpu("A100", 80, 108, 163 * 1024, 164 * 1024)}
# dtype name -> (torch dtype, allow_tf32)
DTYPES = {"fp32": (torch.float32, False), "tf32": (torch.float32, True), "fp16": (torch.float16, False),
          "bf16": (torch.bfloat16, False)}
# TF32 is the fp32 kernel with one tensor-core pass per dot instead of three (3xTF32): it needs
# fewer registers, and every TF32 failure of the CI subset had its fp32 twin failing too (11 of 11,
# 2026-12-01), so the CI subset leaves it to the full matrix (a quarter of the CI compile time).
# bf16 compiles the fp16 kernels with the other 16-bit type: the same tiles, the same pass/fail on
# every case of the CI subset and of the full matrix so far (2026-12-01); the full matrix keeps it.
FULL_MATRIX_ONLY_DTYPES = ("tf32", "bf16")
BATCH = 65536

# field_attention variants by their code-changing flags: (parameters present, options)
FA_VARIANTS = {
    "tf": (("b_qkv", "w_res", "b_res", "ln_weight", "ln_bias"),
           dict(qkv_relu=True, residual="project", res_relu=True, layer_norm="after")),
    "deepctr": (("w_res",), dict(scale=1.0, residual="project")),
    "fuxictr": ((), dict(scale=1.0, residual="identity")),
    "fuxictr-ln": (("ln_weight", "ln_bias"), dict(scale=1.0, residual="identity", layer_norm="before")),
    "interhat": (("b_qkv",), dict(qkv_relu=True, residual="none", out_relu=False)),
}


@dataclasses.dataclass(frozen=True)
class Case:
    op: str                      # field_attention | afm_pooling | hierarchical_aggregation | multi_function_interactions
    kernel: str                  # fwd | bwd, or a key of MULTI_KERNEL_BACKWARDS[op]
    shape: tuple                 # ((name, value), ...)
    dtype: str                   # a key of DTYPES
    capability: int              # a key of GPUS

    @property
    def params(self) -> dict:
        return dict(self.shape)

    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.shape)

    def key(self) -> str:
        return f"{self.op}|{self.kernel}|{self.label()}|{self.dtype}|sm{self.capability}"


# ----------------------------------------------------------------------------------------------
# the matrix
# ----------------------------------------------------------------------------------------------

def _fa_shapes(full: bool):
    heads = [(1, 16), (2, 8), (1, 32), (2, 16), (4, 8), (2, 32), (4, 16), (8, 8)] if full else [(2, 32)]
    fields = (10, 23, 39) if full else (39,)
    for in_dim, (h, dh), m in itertools.product((16, 64), heads, fields):
        yield dict(variant="tf", d=in_dim, H=h, dh=dh, M=m)
    for m in fields:
        yield dict(variant="deepctr", d=16, H=2, dh=32, M=m)
        yield dict(variant="interhat", d=16, H=1, dh=16, M=m)
        yield dict(variant="fuxictr", d=16, H=2, dh=8, M=m)
        if full:
            yield dict(variant="deepctr", d=64, H=2, dh=32, M=m)
            yield dict(variant="fuxictr", d=64, H=2, dh=32, M=m)
            yield dict(variant="fuxictr-ln", d=16, H=2, dh=8, M=m)
            yield dict(variant="fuxictr-ln", d=64, H=2, dh=32, M=m)
            yield dict(variant="interhat", d=64, H=2, dh=32, M=m)


def build_cases(full: bool) -> list[Case]:
    """The CI subset (the papers' configurations, M = 39; no TF32) or the full matrix."""
    shapes = []
    for s in _fa_shapes(full):
        for kernel in FA_KERNELS:
            shapes.append(("field_attention", kernel, s))
        if s["variant"] == "tf" and s["H"] == 2 and s["dh"] == 32:      # the attention output too
            shapes.append(("field_attention", "fwd", {**s, "attention": True}))
            shapes.append(("field_attention", "bwd_attention", {**s, "attention": True}))
    for k, m in itertools.product((16, 64, 256) if full else (16, 64), (10, 39) if full else (39,)):
        for kernel in AFM_KERNELS:
            shapes.append(("afm_pooling", kernel, dict(k=k, t=k, M=m)))
            if k == 16 and kernel != "bwd_parameters":   # the attention gradient enters ds only
                shapes.append(("afm_pooling", kernel, dict(k=k, t=k, M=m, attention=True)))
    ha = itertools.product((16, 40), (16, 30, 64), (3, 4), (10, 39)) if full else [(16, 16, 3, 39)]
    for d, a, orders, m in ha:
        for kernel in HA_KERNELS:
            shapes.append(("hierarchical_aggregation", kernel, dict(d=d, a=a, K=orders, M=m)))
            if (d, a, orders) == (16, 16, 3) and kernel != "bwd_parameters":   # alpha is an input of its own
                shapes.append(("hierarchical_aggregation", kernel, dict(d=d, a=a, K=orders, M=m, attention=True)))
    mfi = (itertools.product((8, 20, 40), (2, 3, 4), (10, 23, 39)) if full
           else [(20, 2, 39), (40, 3, 23)])
    for d, order, m in mfi:
        for kernel in MFI_KERNELS:
            shapes.append(("multi_function_interactions", kernel, dict(d=d, p=order, M=m, F=4)))
    dtypes = DTYPES if full else [d for d in DTYPES if d not in FULL_MATRIX_ONLY_DTYPES]
    return [Case(op, kernel, tuple(shape.items()), dtype, cap)
            for (op, kernel, shape), dtype, cap in itertools.product(shapes, dtypes, GPUS)]


# backwards that launch several kernels (field_attention three, multi_function_interactions,
# hierarchical_aggregation and afm_pooling two): the case's kernel -> launch index
FA_KERNELS = {"fwd": 0, "bwd_output": 0, "bwd_attention": 1, "bwd_input": 2, "bwd_parameters": 3}
MFI_KERNELS = {"fwd": 0, "bwd_embeddings": 0, "bwd_parameters": 1}
HA_KERNELS = {"fwd": 0, "bwd_activations": 0, "bwd_parameters": 1}
AFM_KERNELS = {"fwd": 0, "bwd_activations": 0, "bwd_parameters": 1}
MULTI_KERNEL_BACKWARDS = {"field_attention": FA_KERNELS, "multi_function_interactions": MFI_KERNELS,
                          "hierarchical_aggregation": HA_KERNELS, "afm_pooling": AFM_KERNELS}
MFI_TUPLES = 64        # tuples of order >= 3 in the matrix (the top-K candidates of a search)


# ----------------------------------------------------------------------------------------------
# recording the launcher's launch
# ----------------------------------------------------------------------------------------------

def _meta(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")


def _run_launcher(case: Case, dtype: torch.dtype) -> None:
    """Run the op's launcher for ``case`` on meta tensors (see the module docstring)."""
    from fastint.kernels import afm_pooling, field_attention, hierarchical_aggregation
    from fastint.options import FieldAttentionOptions

    p, B, bwd = case.params, BATCH, case.kernel.startswith("bwd")

    def E(*shape):
        return _meta(*shape, dtype=dtype)

    if case.op == "field_attention":
        present, options = FA_VARIANTS[p["variant"]]
        d, width = p["d"], p["H"] * p["dh"]
        shapes = {"b_qkv": (3 * width,), "w_res": (d, width), "b_res": (width,), "ln_weight": (width,),
                  "ln_bias": (width,)}
        params = [E(d, 3 * width)] + [E(*shapes[n]) if n in present else None
                                      for n in field_attention.PARAMETERS[1:]]
        opts = FieldAttentionOptions(p["H"], **options)
        x = E(B, p["M"], d)
        if bwd:
            ga = E(B, p["H"], p["M"], p["M"]) if p.get("attention") else None
            field_attention.backward(E(B, p["M"], width), ga, x, params, opts)
        else:
            field_attention.forward(x, params, opts, return_attention=bool(p.get("attention")))
    elif case.op == "afm_pooling":
        k, t, m = p["k"], p["t"], p["M"]
        pairs = torch.triu_indices(m, m, 1).T.to("meta")
        args = (E(B, m, k), E(k, t), E(t), E(t), pairs)
        if bwd:
            attention = bool(p.get("attention"))
            a = E(B, pairs.shape[0]) if attention else E(0)
            stats = _meta(B, k + 1, dtype=torch.float32)
            afm_pooling.backward(E(B, k), a if attention else None, *args, a, stats)
        else:
            afm_pooling.forward(*args, bool(p.get("attention")))
    elif case.op == "multi_function_interactions":
        from fastint.kernels import multi_function_interactions as mfi
        from fastint.reference.multi_function_interactions import all_tuples

        d, order, m, functions = p["d"], p["p"], p["M"], p["F"]
        tuples = all_tuples(m, order)[:MFI_TUPLES if order > 2 else None]
        plan = mfi.build_plan(tuples, None, list(range(functions)), functions)
        plan = dataclasses.replace(plan, **{f: getattr(plan, f).to("meta")
                                            for f in ("entries", "table_starts", "parametric")})
        args = (E(B, functions, m, d), plan, E(tuples.shape[0], d), E(tuples.shape[0]), E(order, d))
        if bwd:
            mfi.backward(E(B, functions, tuples.shape[0]), *args)
        else:
            mfi.forward(*args)
    else:
        d, a, orders, m = p["d"], p["a"], p["K"], p["M"]
        args = (E(B, m, d), E(orders, d, a), E(orders, a), E(orders, a))
        if bwd:
            galpha = E(B, orders, m) if p.get("attention") else None
            hierarchical_aggregation.backward(E(B, orders, d), galpha, *args)
        else:
            hierarchical_aggregation.forward(*args, bool(p.get("attention")))


def record_launch(case: Case):
    """The ``(LaunchConfig, runtime arguments)`` the launcher would launch for ``case``."""
    from fastint.kernels import (_common, afm_pooling, field_attention, hierarchical_aggregation,
                                 multi_function_interactions)

    gpu = GPUS[case.capability]
    target = _common.Target(interpreter=False, sm_count=gpu.sm_count, capability=(gpu.capability // 10, 0))
    dtype, tf32 = DTYPES[case.dtype]
    launches = []
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(_common.LaunchConfig, "launch",
                                                  lambda cfg, *args: launches.append((cfg, args))))
            for module in (afm_pooling, field_attention, hierarchical_aggregation,
                           multi_function_interactions):
                stack.enter_context(mock.patch.object(module, "target_of", lambda device: target))
            _run_launcher(case, dtype)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    if case.op in MULTI_KERNEL_BACKWARDS:
        kernels = MULTI_KERNEL_BACKWARDS[case.op]
        index = kernels[case.kernel]
        expected = sum(k.startswith("bwd") for k in kernels) if case.kernel.startswith("bwd") else 1
    else:
        index, expected = 0, 1
    if len(launches) != expected:
        raise RuntimeError(f"{case.key()}: expected {expected} launches, recorded {len(launches)}")
    return launches[index]


def specialise(cfg, args):
    """``(signature, constexprs, attrs)`` as ``JITFunction.run`` builds them for ``args``."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend

    fn = cfg.kernel
    bound = fn.signature.bind(*args, **cfg.meta)
    bound.apply_defaults()
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = bound.arguments[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[(i,)] = "constexpr", value
            continue
        kind, spec = native_specialize_impl(BaseBackend, value, param.is_const, not param.do_not_specialize,
                                            not param.do_not_specialize_on_alignment)
        signature[param.name] = kind
        if kind == "constexpr":
            constexprs[(i,)] = spec
        elif isinstance(spec, str):
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    return signature, constexprs, attrs


# ----------------------------------------------------------------------------------------------
# compiling one case
# ----------------------------------------------------------------------------------------------

_PTXAS = {"regs": re.compile(r"Used (\d+) registers"),
          "spill": re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")}


def occupancy(regs: int, warps: int, smem: int, gpu: Gpu) -> tuple[float, str]:
    """Resident warps / maximum warps per SM and what limits it (registers, smem or threads)."""
    regs_per_warp = math.ceil(regs * 32 / 256) * 256
    limits = {"regs": gpu.registers_per_sm // regs_per_warp // warps,
              "threads": gpu.max_warps_per_sm // warps,
              "smem": gpu.smem_per_sm // (smem + 1024) if smem else gpu.max_blocks_per_sm}
    blocks = min(*limits.values(), gpu.max_blocks_per_sm)
    return blocks * warps / gpu.max_warps_per_sm, min(limits, key=limits.get)


def compile_case(case: Case) -> dict:
    """Compile ``case``; returns the launch, the resource numbers and the verdict."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    gpu = GPUS[case.capability]
    result = {"key": case.key()}
    t0 = time.time()
    cfg, args = record_launch(case)
    signature, constexprs, attrs = specialise(cfg, args)
    options = cfg.compile_options()
    result.update(kernel=cfg.kernel.__name__, grid=list(cfg.grid), num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages, maxnreg=cfg.maxnreg,
                  meta={k: v for k, v in cfg.meta.items() if not k.startswith(("HAS_", "STORE_", "RETURN_"))})
    triton.knobs.nvidia.dump_ptxas_log = True        # Triton prints ptxas -v when it runs ptxas
    triton.knobs.compilation.always_compile = True
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(cfg.kernel, signature, constexprs, attrs),
                                      target=GPUTarget("cuda", gpu.capability, 32), options=options)
    except Exception as err:  # OutOfResources, compiler errors: the case fails
        result.update(ok=False, problems=[f"does not compile: {type(err).__name__}: {str(err)[:200]}"])
        return result
    text = log.getvalue()
    regs, spill = _PTXAS["regs"].search(text), _PTXAS["spill"].search(text)
    if regs is None or spill is None:
        result.update(ok=False, problems=["no ptxas report"])
        return result
    smem = compiled.metadata.shared
    result.update(regs=int(regs.group(1)), stack=int(spill.group(1)), spill_stores=int(spill.group(2)),
                  spill_loads=int(spill.group(3)), smem=smem, num_stages=compiled.metadata.num_stages)
    result["occupancy"], result["limiter"] = occupancy(result["regs"], cfg.num_warps, smem, gpu)
    problems = []
    if result["spill_stores"] or result["spill_loads"]:
        problems.append(f"spills {result['spill_stores']}/{result['spill_loads']} B")
    if smem > gpu.smem_per_block:
        problems.append(f"shared memory {smem / 1024:.0f} KiB > {gpu.smem_per_block // 1024} KiB")
    result.update(ok=not problems, problems=problems, seconds=round(time.time() - t0, 1))
    return result


def _sources_digest(op: str) -> str:
    """Hash of what an op's compiled kernels depend on: Triton's version, the shared kernel layer
    and the op's kernel file."""
    h = hashlib.sha256(triton.__version__.encode())
    for name in ("_common.py", f"{op}.py"):
        with open(os.path.join(KERNELS_DIR, name), "rb") as f:
            h.update(name.encode() + f.read())
    return h.hexdigest()[:16]


def _cached_compile(payload) -> dict:
    case, digest = payload      # the digest of the sources as the run started (do not edit them meanwhile)
    path = os.path.join(CACHE_DIR, digest, hashlib.sha256(case.key().encode()).hexdigest()[:24] + ".json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    try:
        result = compile_case(case)
    except Exception as err:  # a gate bug or a launcher that raises: report it as a failure
        result = {"key": case.key(), "ok": False, "problems": [f"gate error: {type(err).__name__}: {err}"]}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f)
    return result


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------

def _cell(r: dict) -> str:
    if "regs" not in r:
        return "FAIL " + "; ".join(r["problems"])
    spill = "0" if not (r["spill_stores"] or r["spill_loads"]) else f"{r['spill_stores']}/{r['spill_loads']}"
    text = (f"{r['regs']}r spill {spill} smem {r['smem'] / 1024:.0f}K w{r['num_warps']} "
            f"s{r['num_stages']} occ {r['occupancy']:.0%}")
    return text if r["ok"] else "FAIL " + text


def to_markdown(cases: list[Case], results: dict[str, dict], title: str) -> str:
    lines = [title, "",
             "Cell: registers/thread, spill stores/loads (bytes), shared memory per program, warps, "
             "pipeline stages, occupancy (resident warps / 64). FAIL: does not compile, spills, or "
             "exceeds the shared memory per program.", "",
             "| op | kernel | case | dtype | meta | " + " | ".join(f"sm{c} ({g.name})" for c, g in GPUS.items())
             + " |", "|" + " --- |" * (5 + len(GPUS))]
    rows: dict[tuple, dict[int, dict]] = {}
    for case in cases:
        rows.setdefault((case.op, case.kernel, case.label(), case.dtype), {})[case.capability] = results[case.key()]
    for (op, kernel, label, dtype), by_cap in rows.items():
        first = next(iter(by_cap.values()))
        meta = " ".join(f"{k}={v}" for k, v in first.get("meta", {}).items() if k != "PRECISION")
        meta += f" {first['meta']['PRECISION']}" if "PRECISION" in first.get("meta", {}) else ""
        lines.append(f"| {op} | {kernel} | {label} | {dtype} | {meta} | "
                     + " | ".join(_cell(by_cap[c]) for c in GPUS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the whole matrix (default: the CI subset)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compilations")
    parser.add_argument("--only", help="regular expression selecting cases by key")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--baseline", help="JSON list of tolerated (known) failing case keys")
    parser.add_argument("--write-baseline", help="write the current spill/overflow failures here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # Triton 3.9's default, without its warning
    cases = build_cases(args.full)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.key())]
    t0 = time.time()
    digests = {op: _sources_digest(op) for op in {c.op for c in cases}}
    results = {}
    with cf.ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for result in pool.map(_cached_compile, [(c, digests[c.op]) for c in cases], chunksize=1):
            results[result["key"]] = result
    failed = [r for r in results.values() if not r["ok"]]
    title = (f"# Static GPU audit ({'full matrix' if args.full else 'CI subset'}), "
             f"{datetime.date.today()}: triton {triton.__version__}, torch {torch.__version__}, "
             f"batch {BATCH}; {len(cases)} cases, {len(failed)} failing ({time.time() - t0:.0f} s)")
    table = to_markdown(cases, results, title)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    if args.write_baseline:
        with open(args.write_baseline, "w") as f:
            json.dump(sorted(r["key"] for r in failed if "regs" in r), f, indent=1)
            f.write("\n")
    return verdict(results, _load_baseline(args.baseline))


def _load_baseline(path: str | None) -> set[str]:
    if not path:
        return set()
    with open(path) as f:
        return set(json.load(f))


def verdict(results: dict[str, dict], baseline: set[str]) -> int:
    """0 when every failure is a known (baselined) spill or overflow and no known case passes;
    prints the reasons otherwise and returns 1."""
    problems = []
    for key, r in sorted(results.items()):
        if r["ok"] and key in baseline:
            problems.append(f"PASSES NOW (remove it from the baseline) {key}")
        elif not r["ok"] and ("regs" not in r or key not in baseline):
            problems.append(f"FAIL {key}: {'; '.join(r['problems'])}")
    known = sum(1 for key, r in results.items() if not r["ok"] and key in baseline and "regs" in r)
    for line in problems:
        print(line, file=sys.stderr)
    print(f"gpu-audit: {len(results)} cases, {known} known failures tolerated, {len(problems)} problems",
          file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
