# Quick start: `make demo`, then `make test`. Both set up everything they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup graphviz demo test lint samples docs bench clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'  # the test extra includes JAX: both backends are tested
	touch $(STAMP)

# Graphviz's dot renders .svg/.png/.pdf; .json/.dot/.graphml work without it.
graphviz:
	@if ! command -v dot >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Graphviz (Debian package graphviz)" >&2; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null; \
	  else \
	    echo "note: Graphviz's dot is missing; install it (sudo apt-get install graphviz, or brew install graphviz) to render diagrams" >&2; \
	  fi; \
	fi

setup: $(STAMP) graphviz

demo: setup
	mkdir -p demo
	$(VENV)/bin/gradviz inspect samples/shared_trunk.keras -o demo/shared_trunk.json -o demo/shared_trunk.svg -o demo/shared_trunk.html
	$(VENV)/bin/gradviz inspect samples/stop_gradient_head.keras -o demo/stop_gradient_head.svg -o demo/stop_gradient_head.html
	@echo "demo reports and diagrams written to demo/ (open demo/shared_trunk.html)" >&2

# mypy first (a minute), then the suite; both run in CI through .ci/run.
test: setup
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m mypy

samples: setup
	$(PY) samples/make_samples.py

# The README's picture.
docs: setup
	$(VENV)/bin/gradviz inspect samples/shared_trunk.keras --show-norms -o docs/shared_trunk.png
	$(PY) docs/notebook_screenshot.py docs/notebook_report.png   # needs chromium

# Benchmark against hand-written GradientTape loops; rewrites benchmarks/RESULTS.md
# (~15-20 min on 2 cores). BENCH_ARGS=--quick for a tiny run.
BENCH_ARGS ?=
bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo build *.egg-info
