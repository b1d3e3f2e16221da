# dinoflow — the two commands a newcomer runs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# torch first, pinned to the CPU wheel: anything that pulls torch later then finds it satisfied
# instead of downloading a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

# checkov pins its dependencies exactly (boto3, packaging, ...) against constraints.txt: its own venv
CHECKOV_VENV  ?= .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: install test test-fast lint-fix demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -c constraints.txt -e '.[test,torchx]'
	touch $(STAMP)

$(CHECKOV_STAMP): tests/k8s/checkov-requirements.txt
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q -r tests/k8s/checkov-requirements.txt
	touch $(CHECKOV_STAMP)

install: $(STAMP) $(CHECKOV_STAMP)

test: $(STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: $(STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff runs inside `make test` (tests/test_lint.py); this applies its fixes and formatting
lint-fix: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m dinoflow demo

bench: $(STAMP)
	$(PY) benchmarks/augment.py
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) data models checkpoints reports mlruns mlartifacts mlflow.db .dvc/tmp
