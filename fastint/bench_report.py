"""pytest-benchmark JSON (``--benchmark-json``) -> markdown tables a benchmark user reads.

The benchmarks in ``bench/`` describe each measurement in ``extra_info``: ``op`` (e.g.
``field_attention``, ``model:autoint``), ``provider`` (``fastint``, ``eager``, ``compiled`` or a peer
such as ``deepctr_style``), ``mode`` (``forward``, ``forward_backward``, ``train_step``), ``dtype``,
``shape`` (a string describing the case), ``device`` and ``peak_memory_bytes`` (int or null).

``to_markdown`` writes a header line (machine, devices, python/torch versions, date), then per op a
table with one row per (shape, dtype, mode): the median ms of every provider side by side (fastint,
eager, compiled, then the others alphabetically; an empty cell where a provider did not run that
case), fastint's speedup over every other provider, ``x eager``, ``x compiled``, ``x <peer>`` (that
provider's median / fastint's median), and the peak MiB of fastint and eager; a column empty in
every row of a table (e.g. speedups on a CPU run, where the kernels are not timed) is left out.
Benchmarks without those keys (JSON written before this contract) get a plain table per
pytest-benchmark group: name, median ms, peak MiB.

    python -m fastint.bench_report RESULT.json
"""
from __future__ import annotations

import json
import math
import re
import sys
from collections import defaultdict
from datetime import datetime

CASE_KEYS = ("op", "provider", "mode", "dtype", "shape")
FIRST_PROVIDERS = ("fastint", "eager", "compiled")
MEMORY_OF = ("fastint", "eager")
MODE_ORDER = ("forward", "forward_backward", "train_step")
DTYPE_ORDER = ("float32", "float16", "bfloat16")


def _ms(seconds: float) -> str:
    """Milliseconds with three significant digits and no exponent: 0.0123, 1.50, 12.3, 459, 1234."""
    ms = seconds * 1e3
    if ms <= 0:
        return "0"
    return f"{ms:.{max(0, 2 - math.floor(math.log10(ms)))}f}"


def _mib(nbytes: int | None) -> str:
    return "" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _text(value) -> str:
    return str(value).replace("|", "\\|")


def _natural(text: str) -> tuple:
    """Sort key comparing the digit runs of ``text`` as numbers (B=4096 before B=16384)."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text)))


def _ranked(value: str, order: tuple[str, ...]) -> tuple:
    """Sort key: the values of ``order`` first, in that order, then the others alphabetically."""
    return (order.index(value), "") if value in order else (len(order), value)


def _table(header: list[str], rows: list[list[str]], numeric_from: int) -> list[str]:
    """Markdown table; numeric columns (from ``numeric_from`` on) right-aligned, and left out when
    they are empty in every row."""
    keep = [i for i in range(len(header)) if i < numeric_from or any(row[i] for row in rows)]
    header, rows = [header[i] for i in keep], [[row[i] for i in keep] for row in rows]
    align = ["---"] * numeric_from + ["---:"] * (len(header) - numeric_from)
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"] + [
        "| " + " | ".join(row) + " |" for row in rows]


def _header_line(report: dict) -> str:
    machine = report.get("machine_info", {})
    cpu = machine.get("cpu", {}).get("brand_raw")
    devices = sorted({str(b["extra_info"]["device"]) for b in report.get("benchmarks", [])
                      if "device" in b.get("extra_info", {})})
    parts = [f"machine {machine.get('node', '?')}" + (f" ({cpu})" if cpu else "")]
    if devices:
        parts.append("device " + ", ".join(devices))
    parts += [f"{lib} {machine[key]}" for lib, key in
              (("python", "python_version"), ("torch", "torch_version"), ("triton", "triton_version"))
              if key in machine]
    try:
        parts.append(datetime.fromisoformat(report["datetime"]).strftime("%Y-%m-%d %H:%M %Z").strip())
    except (KeyError, TypeError, ValueError):
        parts.append(str(report.get("datetime", "date unknown")))
    return ", ".join(parts)


def op_table(benches: list[dict]) -> list[str]:
    """The markdown lines of one op's table (see the module docstring)."""
    cases: dict[tuple, dict[str, dict]] = defaultdict(dict)  # (shape, dtype, mode) -> provider -> bench
    for b in benches:
        info = b["extra_info"]
        cases[(str(info["shape"]), str(info["dtype"]), str(info["mode"]))][str(info["provider"])] = b
    providers = sorted({p for runs in cases.values() for p in runs}, key=lambda p: _ranked(p, FIRST_PROVIDERS))
    others = [p for p in providers if p != "fastint"]
    header = (["shape", "dtype", "mode"] + [f"{p} ms" for p in providers]
              + [f"x {p}" for p in others] + [f"{p} MiB" for p in MEMORY_OF])
    rows = []
    for shape, dtype, mode in sorted(cases, key=lambda c: (_natural(c[0]), _ranked(c[1], DTYPE_ORDER),
                                                           _ranked(c[2], MODE_ORDER))):
        runs = cases[(shape, dtype, mode)]
        median = {p: b["stats"]["median"] for p, b in runs.items()}
        fastint = median.get("fastint")
        speedups = [f"{median[p] / fastint:.2f}x" if fastint and p in median else "" for p in others]
        memory = [_mib(runs[p]["extra_info"].get("peak_memory_bytes")) if p in runs else "" for p in MEMORY_OF]
        rows.append([_text(shape), _text(dtype), _text(mode)]
                    + [_ms(median[p]) if p in median else "" for p in providers] + speedups + memory)
    return _table(header, rows, numeric_from=3)


def fallback_table(benches: list[dict]) -> list[str]:
    """One row per benchmark of a group written without the op/provider/mode/dtype/shape keys."""
    rows = [[_text(b.get("name", "?")), _ms(b["stats"]["median"]),
             _mib(b.get("extra_info", {}).get("peak_memory_bytes"))]
            for b in sorted(benches, key=lambda b: _natural(b.get("name", "")))]
    return _table(["benchmark", "median ms", "peak MiB"], rows, numeric_from=1)


def to_markdown(report: dict) -> str:
    """The markdown report of a pytest-benchmark JSON document (module docstring)."""
    lines = [_header_line(report)]
    by_op: dict[str, list[dict]] = defaultdict(list)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for b in report.get("benchmarks", []):
        if all(k in b.get("extra_info", {}) for k in CASE_KEYS):
            by_op[str(b["extra_info"]["op"])].append(b)
        else:
            by_group[b.get("group") or "(no group)"].append(b)
    if not by_op and not by_group:
        return "\n".join(lines + ["", "(no benchmarks in the report)"])
    for op in sorted(by_op):
        lines += ["", f"## {op}", ""] + op_table(by_op[op])
    for group in sorted(by_group):
        lines += ["", f"## {group}", ""] + fallback_table(by_group[group])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fastint.bench_report RESULT.json", file=sys.stderr)
        return 2
    try:
        with open(args[0]) as f:
            report = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        print(f"bench_report: error: cannot read {args[0]}: {err}", file=sys.stderr)
        return 2
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
