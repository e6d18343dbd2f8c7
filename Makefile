# make demo: the main job on the embedded default corpora.
# make test: the test suite, network tests included (they fetch from PyPI/Debian into the cache and
# fail without it); offline: make test PYTEST_ARGS='-m "not slow and not gpu and not network"'.
# Both create .venv on first use. GPU users: make setup TORCH_SPEC="torch==2.13.0" with their CUDA index.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.phf-installed
DEMO ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints/cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[dev,ray]"
	touch $@

setup: $(STAMP)

demo: setup
	$(BIN)/phf experiment configs/experiments/demo.yaml out=$(DEMO)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/scoring.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/interleaved.py
	$(BIN)/python bench/stream.py
	$(BIN)/python bench/cpu_attention.py
	$(BIN)/python bench/generate.py

clean:
	rm -rf $(VENV) runs .pytest_cache
