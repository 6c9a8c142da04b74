# One target per pipeline step. `make test` sets everything up from the repo's own files.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell cat requirements.txt requirements-test.txt pyproject.toml tools/pyproject.toml | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)
KERNEL_SPEC := $(VENV)/share/jupyter/kernels/sennet-vessels/kernel.json
DATA := outputs/data/synthetic

.PHONY: setup lint test test-fast data demo explore lab benchmarks ablation kaggle clean-venv

setup: $(STAMP) $(KERNEL_SPEC)

# The venv is rebuilt when missing or when a requirements file or pyproject.toml changed (stale stamp).
# The project (`lib`, what ships to Kaggle) and its tools (`tools`: stand-ins and run tooling) are installed
# editable, importable everywhere with no sys.path edits.
$(STAMP): requirements.txt requirements-test.txt pyproject.toml tools/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e . -e tools
	$(PY) -m pip install -q --no-deps nnunet==1.7.1
	rm -f $(VENV)/.installed-*
	touch $@

# The explorer's kernel, inside the venv (tools.explore puts the venv's share/jupyter first on JUPYTER_PATH):
# a user-level spec would be shared, and overwritten, by every checkout on the machine.
$(KERNEL_SPEC): $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name sennet-vessels --display-name "Python (sennet-vessels)" >/dev/null

lint: setup
	$(PY) -m ruff check .

# Everything, as CI runs it: lint, then every test (slow ones included), the 15 slowest listed.
test: lint
	$(PY) -m pytest

# While editing: skip the tests marked slow (notebooks, training, the offline Kaggle install).
test-fast: lint
	$(PY) -m pytest -m "not slow"

data: setup
	@test -d $(DATA)/train && echo "$(DATA) exists (delete it to regenerate)" || \
		$(PY) -m tools.synthetic --out $(DATA) --preset small --seed 0

# The whole pipeline (notebooks 01 -> 02 -> 03 with papermill) on the synthetic small dataset, on the CPU.
demo: setup
	$(PY) -m tools.pipeline --config configs/demo.toml

# Notebook 01 as a page (Voilà, the slice browser live) or JupyterLab on the notebooks, on 127.0.0.1.
# Data: DATA_DIR=..., else SENNET_DATA_DIR, else the synthetic data (generated on first use). PORT=... to move.
explore: setup
	$(PY) -m tools.explore --port $(or $(PORT),8866) $(if $(DATA_DIR),--data-dir "$(DATA_DIR)")

lab: setup
	$(PY) -m tools.explore --lab --port $(or $(PORT),8888) $(if $(DATA_DIR),--data-dir "$(DATA_DIR)")

benchmarks: setup
	$(PY) benchmarks/metric.py
	$(PY) benchmarks/inference.py
	$(PY) benchmarks/disk.py

# Seed recipe vs pseudo-labels, resolution augmentation, both; resampling on/off; 3 seeds on the synthetic small
# preset (CPU: hours; docs/ablation.md). ABLATION_ARGS to reduce it, e.g. "--epochs 2 --iterations 10".
ablation: setup
	$(PY) benchmarks/ablation.py $(ABLATION_ARGS)

# The Kaggle bundle in outputs/kaggle: notebooks 02/03 ready to push (2 x T4, internet off) and the offline wheels
# dataset (the project's wheel + CPython 3.12 and 3.11 sets, Kaggle's image and the one before; cached in
# outputs/kaggle-wheel-cache). KAGGLE_USER=<your Kaggle user name>; KAGGLE_ARGS for more (e.g. "--python 3.10", which
# replaces the default Pythons: "--python 3.12 --python 3.11 --python 3.10" for all three; "--refresh").
KAGGLE_USER ?= your-kaggle-username
kaggle: setup
	$(PY) -m tools.kaggle --out outputs/kaggle --user $(KAGGLE_USER) $(KAGGLE_ARGS)

clean-venv:
	rm -rf $(VENV)
