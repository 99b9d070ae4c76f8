# Two commands on a fresh machine:  `make demo` (the whole pipeline, tiny models) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
CUDA_HOME ?= $(firstword $(wildcard /usr/local/cuda-13.0 /usr/local/cuda))
export CUDA_HOME
export HF_HUB_OFFLINE := 1
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.torch_extensions

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt setup.py $(wildcard csrc/*)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-build-isolation -e .
	touch $@

demo: install
	$(BIN)/python launchers/pipeline.py --out outputs/demo

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python benchmarks/kernels.py

clean:
	rm -rf build babylm_ds/*.so outputs
