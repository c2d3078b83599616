# Every target bootstraps .venv/ by itself (fresh machine: python3 + pip + gcc are enough).
# Re-running is fast: the install stamp is only remade when the packaging or C++ sources change.

PYTHON ?= python3
# The test suite runs several torch processes at once (torchrun workers): OpenMP threads that
# spin while they wait would fight over the cores, so its threads wait passively. `demo` keeps
# OpenMP's default, 2x faster on a quiet machine (python -m drpose.train goes passive by itself
# when the machine is busy).
TEST_ENV := OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE}
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.drpose-installed
# torch==2.13.0 is the CPU build on this disk; on a GPU machine install your CUDA torch into the
# venv first and pass TORCH_SPEC= (empty) to keep it.
TORCH_SPEC ?= torch==2.13.0
# The extension is built portable, as `pip install -e .` builds it (the binary CI tests is the one
# users get; its heatmap loop picks AVX2 at run time). DRPOSE_NATIVE=1 tunes it to this CPU
# (-march=native: 5-15% faster kernels here); `make clean` first to rebuild an existing venv.
DRPOSE_NATIVE ?= 0
CSRC := $(wildcard csrc/*.cpp csrc/*.h csrc/*.inc csrc/*.cu)
CUDA_SOURCES := $(wildcard csrc/*.cu)

# Debian packages the tests use: libusb (open3d imports it) and the free BVH clips of
# assimp-testmodels. Installed when apt-get is there and we are root; elsewhere the tests that
# need them skip and say why.
APT_PACKAGES := libusb-1.0-0 assimp-testmodels

.PHONY: demo experiment test bench lint cuda-check gpu-check gpu-test clean system-deps

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml setup.py $(CSRC)
	$(BIN)/pip install -q --upgrade pip setuptools wheel ninja
	$(if $(TORCH_SPEC),$(BIN)/pip install -q "$(TORCH_SPEC)")
	$(BIN)/pip install -q triton
	DRPOSE_NATIVE=$(DRPOSE_NATIVE) $(BIN)/pip install -q -e ".[dev]" --no-build-isolation
	touch $(STAMP)

system-deps:
	@dpkg -s $(APT_PACKAGES) >/dev/null 2>&1 || { \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
		else echo "note: install $(APT_PACKAGES) (Debian) for the tests that need them"; fi; }

## make demo: the main job, DrPose reward fine-tuning on its embedded default (python -m drpose.train)
demo: $(STAMP)
	$(BIN)/python -m drpose.train

## make experiment: DrPose's experiment in miniature on the CPU (python -m drpose.eval experiment),
## cached per stage in $(EXPERIMENT_DIR): a rerun reuses the finished stages
EXPERIMENT_DIR ?= runs/experiment
experiment: $(STAMP) system-deps
	$(BIN)/python -m drpose.eval experiment --out $(EXPERIMENT_DIR)

## make test: lint, the whole test suite, the Triton compile gate (gpu-check) and (when csrc/ has
## CUDA sources) their compile check
test: $(STAMP) system-deps gpu-check $(if $(CUDA_SOURCES),cuda-check)
	$(BIN)/ruff check .
	$(TEST_ENV) $(BIN)/python -m pytest -q

## make bench: pytest-benchmark suite, each fused op against its torch baseline
bench: $(STAMP)
	$(BIN)/python -m pytest bench --benchmark-only -q \
		--benchmark-columns=min,median,mean,rounds --benchmark-sort=name

## make gpu-check: compile every Triton launch of the public ops for sm_80/86/89/90 without a GPU;
## fails on a compile error, shared memory over the arch's limit, or a forbidden register spill
gpu-check: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m drpose.ops.gpu_check --jobs 2

## make gpu-test: on a GPU machine (README, GPU machines), under 8 minutes: the ops on CUDA against
## their references, 2 reward steps of the random full-size PSHuman pipeline at 768² in bf16 (time
## per step, peak GPU memory), the kernel benchmarks; one report, gpu-report/report.md. Uses the
## venv's python when there is one, else python3 (a machine with CUDA torch and drpose installed)
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-test:
	$(GPU_PYTHON) tools/gpu_test.py --out gpu-report

lint: $(STAMP)
	$(BIN)/ruff check .

## make cuda-check: compile csrc/ (with CUDA sources) against the CUDA build of torch, in .venv-cuda
## (sm_90 only, to stay fast; CUDA_HOME= another toolkit whose major version matches torch's CUDA)
CUDA_VENV := .venv-cuda
CUDA_STAMP := $(CUDA_VENV)/.drpose-cuda-built
CUDA_HOME ?= /usr/local/cuda
cuda-check: $(CUDA_STAMP)
$(CUDA_STAMP): setup.py $(CSRC)
	@test -x $(CUDA_HOME)/bin/nvcc || { echo "cuda-check: no nvcc at $(CUDA_HOME)/bin/nvcc; install a CUDA toolkit or pass CUDA_HOME="; exit 1; }
	test -x $(CUDA_VENV)/bin/python || $(PYTHON) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q --upgrade pip setuptools wheel ninja
	$(CUDA_VENV)/bin/pip install -q torch==2.14.1 numpy
	rm -rf build/cuda-check
	CUDA_HOME=$(CUDA_HOME) TORCH_CUDA_ARCH_LIST=9.0 DRPOSE_BUILD_CUDA=1 MAX_JOBS=2 \
		$(CUDA_VENV)/bin/python setup.py build_ext --build-temp build/cuda-check/tmp \
		--build-lib build/cuda-check/lib
	@! nm -D --undefined-only build/cuda-check/lib/drpose/_C*.so | grep -i drpose || \
		{ echo "cuda-check: drpose._C leaves drpose symbols undefined (see above)"; exit 1; }
	touch $(CUDA_STAMP)

clean:
	rm -rf build *.egg-info drpose/_C*.so .pytest_cache .benchmarks
