"""``make gpu-check``: the one command that validates fastint on a machine with an NVIDIA GPU
(no internet needed once torch, triton, pytest, pytest-benchmark, cmake, ninja and
scikit-build-core are installed).

1. rebuilds the C++/CUDA extension with CUDA (``FASTINT_CUDA=on``);
2. runs the whole test suite on the GPU (the Triton kernels compiled for it, bf16 included);
3. runs the benchmark suite at its goal cases (``FASTINT_BENCH_SIZE=quick``: B = 4096 and 65,536,
   M = 39; about 8 minutes on an H200);
4. writes ``bench/results/<gpu>-<date>.md``: device, driver, CUDA, torch and triton versions, the
   test summary and every benchmark ratio (``fastint.bench_report``).

Exit status: non-zero when the build or any test fails (the report is written either way).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd: list[str], **env) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)


def tail(proc: subprocess.CompletedProcess, lines: int = 1) -> str:
    print(proc.stdout[-4000:], flush=True)
    return "\n".join(proc.stdout.strip().splitlines()[-lines:])


def main() -> int:
    import torch
    import triton

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    driver = run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).stdout.strip()
    build = run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "-e", "."], FASTINT_CUDA="on")
    tests = run([sys.executable, "-m", "pytest", "-q", "tests", "-p", "no:cacheprovider"])
    os.makedirs(os.path.join(ROOT, "runs"), exist_ok=True)
    bench_json = os.path.join(ROOT, "runs", "gpu-check-bench.json")
    bench = run([sys.executable, "-m", "pytest", "-q", "bench", "--benchmark-only", "-p", "no:cacheprovider",
                 f"--benchmark-json={bench_json}"], FASTINT_BENCH_SIZE="quick")
    from fastint.bench_report import to_markdown

    table = to_markdown(json.load(open(bench_json))) if os.path.isfile(bench_json) else "(no benchmark JSON)"
    date = datetime.date.today().isoformat()
    name = re.sub(r"[^A-Za-z0-9]+", "-", gpu).strip("-").lower()
    path = os.path.join(ROOT, "bench", "results", f"{name}-{date}.md")
    with open(path, "w") as f:
        f.write(f"# fastint on {gpu}, {date}\n\n"
                f"driver {driver}, CUDA {torch.version.cuda}, torch {torch.__version__}, "
                f"triton {triton.__version__}, python {sys.version.split()[0]}\n\n"
                f"- build with CUDA: {'ok' if build.returncode == 0 else 'FAILED'}\n"
                f"- tests: {tail(tests)}\n- benchmarks (FASTINT_BENCH_SIZE=quick): {tail(bench)}\n\n"
                f"{table}\n")
    print(f"gpu-check: wrote {os.path.relpath(path, ROOT)}")
    return 0 if build.returncode == 0 and tests.returncode == 0 and bench.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
