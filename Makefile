# Two entry points, each setting itself up on a fresh machine (idempotent):
#   make space   serve the Gradio Space on the bundled release model at http://127.0.0.1:7860
#   make test    lint and run the test suite
# TORCH is what gets installed when the venv has no torch yet: the CPU wheel by default; GPU users can
# pass their own (make test TORCH='torch') or create .venv with their torch beforehand.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: space test setup chromium

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Debian's chromium for the Space's browser test (Playwright drives it; no browser download).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

space: setup
	$(PY) space/app.py

test: setup chromium
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest
