# One target per pipeline step. `make test` sets everything up from the repo's own files.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
REQ_HASH := $(shell cat requirements.txt requirements-test.txt | sha1sum | cut -c1-12)
STAMP := $(VENV)/.installed-$(REQ_HASH)
DATA := outputs/data/synthetic

.PHONY: setup test data benchmarks clean-venv

setup: $(STAMP)

# The venv is rebuilt when missing or when either requirements file changed (stale stamp).
$(STAMP): requirements.txt requirements-test.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps nnunet==1.7.1
	$(PY) -m ipykernel install --user --name sennet-vessels --display-name "Python (sennet-vessels)" >/dev/null
	rm -f $(VENV)/.installed-*
	touch $@

test: setup
	$(PY) -m pytest

data: setup
	$(PY) -m lib.synthetic --out $(DATA) --preset small --seed 0

benchmarks: setup
	$(PY) benchmarks/metric.py

clean-venv:
	rm -rf $(VENV)
