# Two entry points that set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The BioViL baselines get an environment of their own: hi-ml-multimodal needs torchvision, and PyPI's torchvision
# does not import beside the CPU build of torch that .venv uses. On this project's x86_64 machines the pair below lies
# on local disk (a CUDA build, about 5.5 GB, installed without any download; it runs on the CPU). Elsewhere set
# BASELINE_TORCH to any torch + torchvision pair that import together.
BASELINE_VENV ?= .venv-baselines
BASELINE_BIN := $(BASELINE_VENV)/bin
BASELINE_STAMP := $(BASELINE_VENV)/.installed
BASELINE_TORCH ?= torch==2.14.1 torchvision==0.29.1
CHROMEDRIVER ?= /usr/bin/chromedriver

.PHONY: demo test test-core test-baselines lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build first: with torch already satisfied, the project install pulls no CUDA wheels.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,app,ray,docs]"
	touch $(STAMP)

# The browser tests (tests/test_browser.py) drive Debian's Chromium through its chromedriver; apt needs root.
$(CHROMEDRIVER):
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver

$(BASELINE_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BASELINE_VENV)
	$(BASELINE_BIN)/python -m pip install -q --upgrade pip
	$(BASELINE_BIN)/python -m pip install -q $(BASELINE_TORCH)
	$(BASELINE_BIN)/python -m pip install -q -e ".[dev,baselines]"
	touch $(BASELINE_STAMP)

demo: $(STAMP)
	$(BIN)/medground demo --out demo-out

test: test-core test-baselines docs

# The documentation site, warnings (broken links included) as errors.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

test-core: $(STAMP) $(CHROMEDRIVER)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

test-baselines: $(BASELINE_STAMP)
	$(BASELINE_BIN)/python -m pytest -q tests/test_biovil.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) $(BASELINE_VENV) demo-out site dist .pytest_cache
