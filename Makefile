# The two commands a newcomer needs (see README): `make run` and `make test`.
# Both set everything up on first use (venv, dependencies, build) and are no-ops the second time.
# An already installed torch (e.g. a CUDA image's) is reused: the venv sees system site-packages,
# and torch is only installed when none can be imported.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
TORCH_VERSION  ?= 2.13.0
TRITON_VERSION ?= 3.9.0
TOOLS  := "scikit-build-core>=0.10" ninja pytest pytest-benchmark pytest-xdist numpy tqdm pyyaml matplotlib
# The peer libraries the fastint.patch tests run against (optional: those tests skip without them).
# fuxictr is installed without its declared dependencies (ray[data], pydantic, ... for its data
# pipeline); PEER_DEPS is what importing its models needs (its package __init__s import polars,
# h5py and ray.data), and deepctr-torch needs scikit-learn. Neither asks for another torch.
PEERS     := deepctr-torch==0.3.0
PEER_DEPS := scikit-learn==1.9.1 polars==2.1.0 h5py==3.16.0 pyarrow==26.0.1 pandas==3.1.1 ray==2.60.0
# torchrec for fastint.torchrec (optional: tests/torchrec skip without it), installed without its
# declared dependencies: they name the CUDA fbgemm-gpu, which must not land on a CPU torch (and could
# pull another torch). FBGEMM's build must match torch's: fbgemm-gpu for a CUDA torch, else
# fbgemm-gpu-cpu (1.9.0 does not load on torch 2.13). TORCHREC_DEPS is what importing torchrec needs.
TORCHREC_VERSION ?= 1.8.0
TORCHREC_DEPS := tensordict==0.15.3 cloudpickle==3.1.2 pyvers==0.2.2 pyre-extensions==0.0.32 \
                 typing-inspect==0.9.0 mypy-extensions==1.1.0
# parallel test workers: the interpreted kernel tests are single-threaded
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))")

.PHONY: run test bench cuda-check gpu-audit gpu-audit-ci gpu-check setup clean

run: $(VENV)/.installed
	$(VENV)/bin/fastint train

test: $(VENV)/.installed $(VENV)/.peers $(VENV)/.torchrec
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

bench: $(VENV)/.installed
	$(VENV)/bin/fastint bench

# Compiles the CUDA sources without linking (catches CUDA syntax errors on machines without a GPU).
cuda-check: $(VENV)/.deps
	PATH="$(abspath $(VENV))/bin:$$PATH" cmake -S . -B build/cuda-check -G Ninja \
		-DPython_EXECUTABLE=$(abspath $(PY)) -DFASTINT_CUDA_COMPILE_CHECK=ON >/dev/null
	PATH="$(abspath $(VENV))/bin:$$PATH" cmake --build build/cuda-check --target fastint_cuda_check

# Static GPU gate (no GPU needed): every Triton kernel at its launcher's configuration compiled for
# sm_90 and sm_80; the full matrix and its table (gpu-audit), or the CI subset against the
# baseline of known spills (gpu-audit-ci). See bench/gpu_audit.py.
gpu-audit: $(VENV)/.installed
	$(PY) -m bench.gpu_audit --full --out bench/results/static-gpu-audit-$$(date +%F).md

gpu-audit-ci: $(VENV)/.installed
	mkdir -p build
	$(PY) -m bench.gpu_audit --baseline bench/gpu_audit_baseline.json > build/gpu-audit-ci.md

# On a machine with an NVIDIA GPU: CUDA build, the whole test suite on the GPU, the goal
# benchmarks, and bench/results/<gpu>-<date>.md. See bench/gpu_check.py.
gpu-check: $(VENV)/.installed
	$(PY) -m bench.gpu_check

setup: $(VENV)/.installed

$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)

$(VENV)/.deps: $(PY) Makefile
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PY) -c "import triton" 2>/dev/null || $(PIP) install "triton==$(TRITON_VERSION)"
	$(PIP) install $(TOOLS)
	touch $@

# a machine without the registries still runs the tests: the patch tests skip (and this retries)
$(VENV)/.peers: $(VENV)/.deps
	@if $(PIP) install $(PEERS) $(PEER_DEPS) && $(PIP) install --no-deps fuxictr==2.3.10; then \
		touch $@; else echo "make: peer libraries not installed: tests/patch will skip" >&2; fi

# a machine without the registry still runs the tests: tests/torchrec skip (and this retries)
$(VENV)/.torchrec: $(VENV)/.deps
	@fbgemm=$$($(PY) -c "import torch; print('fbgemm-gpu' if torch.version.cuda else 'fbgemm-gpu-cpu')"); \
	if $(PIP) install --no-deps torchrec==$(TORCHREC_VERSION) $$fbgemm==$(TORCHREC_VERSION) $(TORCHREC_DEPS) \
		&& $(PY) -c "import fbgemm_gpu, torchrec"; then touch $@; \
	else echo "make: torchrec not installed: tests/torchrec will skip" >&2; fi

$(VENV)/.installed: $(VENV)/.deps pyproject.toml CMakeLists.txt $(wildcard csrc/*)
	$(PIP) install --no-build-isolation -e .
	touch $@

clean:
	rm -rf build $(VENV)
