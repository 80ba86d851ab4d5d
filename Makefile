# Two commands on a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv, installs the pinned dependencies and builds the C++ extension first.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
OUT ?= runs/demo
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: env demo test bench data clean

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

clean:
	rm -rf build *.egg-info distree_kernels/*.so $(VENV)
