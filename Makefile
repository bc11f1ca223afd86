# Two entry points: `make demo` (set up, then segment the bundled example image) and
# `make test` (set up, then run the test suite). Both need nothing but python3 >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on CPU-only machines, the CUDA build elsewhere
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,coco,demo]"
	touch $(STAMP)

# The browser test drives Debian's Chromium (never a downloaded browser build). Without root
# (apt-get fails) the test is skipped locally; under CI it fails instead.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: the browser test will be skipped"

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/diffuseg segment diffuseg/assets/example.jpg --method ncut --out out/demo --overwrite
	@echo "wrote out/demo/ (label PNG, overlay PNG, JSON)"

test: $(STAMP) chromium
	$(BIN)/ruff check diffuseg tests bench
	$(BIN)/python -m pytest -q

test-slow: $(STAMP) chromium
	$(BIN)/python -m pytest -q --runslow

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) out .pytest_cache
