"""pytest-benchmark JSON (``--benchmark-json``) -> a markdown table.

One row per benchmark: group, test name, parameters, mean / median / min time (ms), rounds, and any
``extra_info`` (device, peak memory in MiB, ...). Header lines give the machine and versions
recorded by pytest-benchmark. ``python -m fastint.train.bench_report result.json`` prints it.
"""
from __future__ import annotations

import json
import sys


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(report: dict) -> str:
    benches = report.get("benchmarks", [])
    machine = report.get("machine_info", {})
    lines = [f"machine: {machine.get('node', '?')} ({machine.get('cpu', {}).get('brand_raw', '?')}), "
             f"python {machine.get('python_version', '?')}, run {report.get('datetime', '?')}", ""]
    if not benches:
        return "\n".join(lines + ["(no benchmarks in the report)"])
    extra_keys: list[str] = []
    for b in benches:
        for k in b.get("extra_info", {}):
            if k not in extra_keys:
                extra_keys.append(k)
    header = ["group", "name", "params", "mean ms", "median ms", "min ms", "rounds"] + [
        "peak MiB" if k == "peak_memory_bytes" else k for k in extra_keys]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for b in sorted(benches, key=lambda b: (b.get("group") or "", b.get("name", ""))):
        stats = b.get("stats", {})
        params = ", ".join(f"{k}={v}" for k, v in (b.get("params") or {}).items())
        extra = b.get("extra_info", {})
        row = [b.get("group"), b.get("name", "").split("[")[0], params,
               stats.get("mean", 0) * 1e3, stats.get("median", 0) * 1e3, stats.get("min", 0) * 1e3,
               stats.get("rounds")]
        for k in extra_keys:
            v = extra.get(k)
            row.append(v / 2**20 if k == "peak_memory_bytes" and v is not None else v)
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m fastint.train.bench_report RESULT.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        print(to_markdown(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
