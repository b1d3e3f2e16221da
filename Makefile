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

# Container images (docker/): no public registry serves them, so a cluster deploy starts here:
#   make images REGISTRY=ghcr.io/acme [CUDA_VERSION=13.0] [PUSH=0]
# builds both, pushes them and writes build/images.json (the pushed digests) for
# `dinoflow pipeline compile|submit --images-file build/images.json`, then prints the
# `kustomize edit set image` commands for the k8s/ overlay.
VERSION      := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' src/dinoflow/__init__.py)
CUDA_VERSION ?= 13.0
PUSH         ?= 1
GIT_COMMIT   := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
CPU_REF       = $(REGISTRY)/dinoflow-cpu:$(VERSION)
TRAIN_REF     = $(REGISTRY)/dinoflow-cuda:$(VERSION)
SERVING_REF   = $(REGISTRY)/dinoflow-serving:$(VERSION)

.PHONY: install test test-fast lint-fix demo bench clean images

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
	$(PY) -m pytest -q -p no:cacheprovider --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP) $(CHECKOV_STAMP)
	$(PY) -m pytest -q -m "not slow" --durations=15 $(PYTEST_ARGS)

# ruff runs inside `make test` (tests/test_lint.py); this applies its fixes and formatting
lint-fix: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

demo: $(STAMP)
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m dinoflow demo

bench: $(STAMP)
	$(PY) benchmarks/augment.py
	$(PY) benchmarks/train_throughput.py

images:
	@test -n "$(REGISTRY)" || { echo "make images: set REGISTRY to your registry prefix, e.g. make images REGISTRY=ghcr.io/acme" >&2; exit 2; }
	docker build -f docker/Dockerfile.cpu -t $(CPU_REF) --build-arg GIT_COMMIT=$(GIT_COMMIT) .
	docker build -f docker/Dockerfile -t $(TRAIN_REF) --build-arg CUDA_VERSION=$(CUDA_VERSION) --build-arg GIT_COMMIT=$(GIT_COMMIT) .
	docker build -f docker/Dockerfile.serving -t $(SERVING_REF) .
	@if [ "$(PUSH)" = 1 ]; then \
	  docker push $(CPU_REF) && docker push $(TRAIN_REF) && docker push $(SERVING_REF) && mkdir -p build && \
	  cpu=$$(docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' $(CPU_REF) | grep -m1 '^$(REGISTRY)/dinoflow-cpu@') && \
	  train=$$(docker inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' $(TRAIN_REF) | grep -m1 '^$(REGISTRY)/dinoflow-cuda@') && \
	  printf '{"train": "%s", "cpu": "%s"}\n' "$$train" "$$cpu" > build/images.json && \
	  echo "wrote build/images.json; point the overlay at the same digests:" && \
	  echo "  (cd k8s/overlays/<standalone|multi-user> && kustomize edit set image dinoflow/dinoflow-cpu=$$cpu dinoflow/dinoflow-cuda=$$train)"; \
	  echo "  (cd k8s/serving && kustomize edit set image dinoflow/dinoflow-cpu=$$cpu dinoflow/dinoflow-serving=$(SERVING_REF))"; \
	fi

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) data models checkpoints reports mlruns mlartifacts mlflow.db .dvc/tmp
