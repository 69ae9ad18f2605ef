# Two entry points, each setting itself up on a fresh machine (idempotent):
#   make space   serve the Gradio Space on the bundled release model at http://127.0.0.1:7860
#   make test    lint and run the test suite
# and the release recipe without a GPU (README, "Training without a GPU"): make cpu-release trains the improved
# model on grouped folds 1-4 of data/all-sources-clean (about an hour on 2 cores), resuming an interrupted run, and
# writes release/ with its operating point and results/release.json;
# make gpu-matrix (README, "Training on a GPU") benchmarks the training step, then trains the release candidate and
# the cross-validation matrix side by side on one GPU for MATRIX_SECONDS, evaluates them and writes results/matrix/
# (and, with PACK=DIR, what a lent machine sends back). Where torch is installed already: make gpu-matrix PY=python3
# TORCH is what gets installed when the venv has no torch yet: the CPU wheel by default; GPU users can
# pass their own (make test TORCH='torch') or create .venv with their torch beforehand.

VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

SOURCE_4K ?= ../shared/data/brain-tumor-mri-4k
EXTERNAL ?= ../shared/data/brain-tumor-mri-sartaj
CPU_RUN ?= runs/cpu-release-clean
# the model repo the release's card names (its model-index and loading snippet), as the Space's README does
HUB_MODEL_ID ?= brain-resnet/improved-resnet34-brain-mri

.PHONY: space test setup chromium cpu-release gpu-matrix

setup: $(VENV)/.installed

# With PY=... (a Python that has everything, such as a lent GPU machine's) no .venv is made or marked as set up.
$(VENV)/.installed: pyproject.toml
ifeq ($(PY),$(VENV)/bin/python)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $@
else
	@echo "PY=$(PY): using that Python as it is"
endif

# Debian's chromium for the Space's browser test (Playwright drives it; no browser download).
chromium:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

space: setup
	$(PY) space/app.py

test: setup chromium
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

data/brain-tumor-mri-4k: | setup
	$(PY) prepare_dataset.py $(SOURCE_4K) $@ --folds 5 --seed 0

cpu-release: setup data/all-sources-clean
	$(PY) train.py --dataset data/all-sources-clean --output-dir $(CPU_RUN) --protocol grouped --folds 0 \
		--epochs 60 --image-size 128 --batch-size 128 --lr 2e-3 --paste-prob 0.3 --workers 1 --resume
	$(PY) make_release.py $(CPU_RUN)/fold-0 --output release --healthy-false-alarms 0.05 --mirror-average \
		--summary results/summary.json --recipe-cross-validation results/gpu-6/recipe-cross-validation.json \
		--report results/release.json --workers 2 --hub-model-id $(HUB_MODEL_ID)

data/all-sources: | setup
	$(PY) prepare_dataset.py $(SOURCE_4K) $(EXTERNAL) $@ --folds 5 --seed 0

# The release's data: every source less the slices labelled notumor that show a tumor (results/label-audit/);
# every other slice keeps its data/all-sources fold.
DOUBTFUL ?= results/label-audit/doubtful-notumor.txt
data/all-sources-clean: | setup
	$(PY) prepare_dataset.py $(SOURCE_4K) $(EXTERNAL) $@ --folds 5 --seed 0 --exclude $(DOUBTFUL)

data/brain-tumor-mri-sartaj:
	mkdir -p data && cp -r $(EXTERNAL) $@

MATRIX_RUNS ?= random:improved,random:resnet34,grouped:improved,grouped:resnet34,random:no-multiscale,random:no-inception,random:no-se
MATRIX_SECONDS ?= 390
MATRIX_PROCESSES ?= 16
MATRIX_MPS ?= --mps
MATRIX_TRAIN ?= --epochs 60 --image-size 128 --batch-size 128 --lr 2e-3 --save-every 60 --no-compile
BENCH_TRAIN ?= --batch-size 128 --image-size 128 --steps 40 --warmup 10 --no-compile
MATRIX_OUTPUT ?= runs/gpu
MATRIX_RESULTS ?= results/matrix
MATRIX_RELEASE ?= release
MATRIX_FLAGS ?=
PACK ?=

gpu-matrix: data/all-sources data/brain-tumor-mri-sartaj
	mkdir -p $(MATRIX_RESULTS)
	$(PY) benchmarks/bench_train.py $(BENCH_TRAIN) | tee $(MATRIX_RESULTS)/bench-train.txt
	$(PY) run_matrix.py --dataset data/all-sources --sources figshare,br35h --external data/brain-tumor-mri-sartaj \
		--runs $(MATRIX_RUNS) --processes $(MATRIX_PROCESSES) $(MATRIX_MPS) --time-limit $(MATRIX_SECONDS) \
		--output-dir $(MATRIX_OUTPUT) --results $(MATRIX_RESULTS) --release $(MATRIX_RELEASE) $(if $(PACK),--pack $(PACK)) \
		--hub-model-id $(HUB_MODEL_ID) $(MATRIX_FLAGS) -- $(MATRIX_TRAIN)
