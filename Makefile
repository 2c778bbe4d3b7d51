# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
# Each creates .venv when missing and installs vqtok with constraints.txt, which pins
# torch==2.13.0 (the CPU build) so that no later install pulls a CUDA build.
# Tests read data sets through VQTOK_DATA; beside a checkout with ../shared/data, that
# folder is used (tests/conftest.py), else tests needing Fashion-MNIST skip with a hint.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIP_INSTALL := $(PIP) install --quiet --constraint constraints.txt
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install test test-all demo bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# taming-transformers is the reference of the conversion tests (docs/interop.md): its model
# code only, with --no-deps, as its declared requirements would pull an old Lightning.
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP_INSTALL) -e ".[dev]"
	$(PIP_INSTALL) --no-deps "taming-transformers==0.0.1"
	# The reference the FID Inception tests compare against (docs/eval.md): torch-fidelity
	# without its dependencies (it requires torchvision, which cannot install beside the
	# pinned torch), in a folder of its own off the import path: installed beside
	# torchmetrics, torchmetrics would import it, and with it torchvision, on every import.
	# The tests load its one torch-only file by path; likewise efficientnet_lite_pytorch's.
	$(PIP_INSTALL) --no-deps --upgrade --target $(VENV)/reference "torch-fidelity==0.4.0" \
		"efficientnet-lite-pytorch==0.1.0"
	touch $@

$(BENCH_STAMP): $(STAMP)
	$(PIP_INSTALL) -e ".[dev,bench]"
	touch $@

install: $(STAMP)

## test: lint, then the default suite (slow tests excluded); what .ci/run calls
test: lint
	$(PY) -m pytest -q

## test-all: also the tests marked slow
test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

## demo: train the default photo tokenizer briefly, export it, round-trip a held-out photo
demo: $(STAMP)
	$(VENV)/bin/vqtok demo

## bench: quantizer benchmarks against vector-quantize-pytorch, writes benchmarks/RESULTS.md
bench: $(BENCH_STAMP)
	$(PY) benchmarks/quantizers.py

## lint: ruff, and the import-layer contracts of pyproject.toml (docs/architecture.md)
lint: $(STAMP)
	$(PY) -m ruff check vqtok tests benchmarks experiments
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) build *.egg-info
