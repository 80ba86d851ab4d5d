# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv, installs the pinned dependencies and builds the C++ extension first.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
OUT ?= runs/demo
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: env demo test bench data clean cuda-build

env: $(VENV)/.built

$(VENV)/.deps: requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# Fashion-MNIST comes from Debian's package; nothing is downloaded at run time.
data:
	@test -f $(FASHION) || { command -v apt-get >/dev/null && apt-get install -y -q dataset-fashion-mnist; } \
	  || echo "install Fashion-MNIST with: apt-get install dataset-fashion-mnist"

demo: env data
	$(VENV)/bin/distree demo --out $(OUT)

test: env
	$(PY) -m pytest -q tests

bench: env
	$(PY) -m pytest -q benches --benchmark-columns=median,iqr,rounds --benchmark-sort=name

# The CUDA build, checked without a GPU: a second venv with the CUDA torch, the extension
# compiled by nvcc and installed into it as a copy (not editable, so distree_kernels/_C*.so in
# the source tree stays the CPU venv's build), then a check that every C++ op has its CUDA
# kernel registered. GPU architectures: TORCH_CUDA_ARCH_LIST, default in setup.py. The triton
# pin in requirements.txt is the CPU torch's; this torch brings its own (triton~=3.8).
CUDA_VENV ?= .venv-cuda
CUDA_PY := $(CUDA_VENV)/bin/python
CUDA_TORCH ?= torch==2.14.1
MAX_JOBS ?= 2

$(CUDA_VENV)/.deps: requirements.txt
	test -x $(CUDA_PY) || python3 -m venv $(CUDA_VENV)
	$(CUDA_PY) -m pip install -q $(CUDA_TORCH)
	grep -v '^triton' requirements.txt > $(CUDA_VENV)/requirements.txt
	$(CUDA_PY) -m pip install -q -r $(CUDA_VENV)/requirements.txt
	touch $@

$(CUDA_VENV)/.built: $(CUDA_VENV)/.deps setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*) \
		$(wildcard distree_kernels/*.py distree/*.py distree/*/*.py)
	DISTREE_BUILD_CUDA=1 MAX_JOBS=$(MAX_JOBS) $(CUDA_PY) -m pip install -q --no-build-isolation --no-deps .
	touch $@

# -P: the source tree is not put on sys.path, so the installed CUDA build is the one tested.
cuda-build: $(CUDA_VENV)/.built
	$(CUDA_PY) -P -m pytest -q tests/test_cuda_registration.py

clean:
	rm -rf build *.egg-info distree_kernels/*.so $(VENV) $(CUDA_VENV)
