# raytrain8m — every target installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install

.PHONY: install test test-fast demo sweep ensemble infer mlflow-ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -x -q tests

test-fast: install
	$(PY) -m pytest -x -q -m "not slow" tests

# --- ensemble + inference (jobs/ensemble.py, jobs/infer.py) ---
# make ensemble MEMBERS=YHLS [WEIGHTS=0.39,0.26,0.21,0.14]   (no WEIGHTS: tuned on validate GAP;
# no MEMBERS: the best zoo combination under BUDGET MiB, found by --search)
ZOO ?= runs/sweep/zoo.json
VALIDATE_DATA ?= data/synth/validate*.tfrecord
ENSEMBLE_DIR ?= runs/ensemble
BUDGET ?= 1024
TEST_DATA ?= data/synth/test*.tfrecord
SUBMISSION ?= runs/submission.csv

ensemble: install
	$(PY) jobs/ensemble.py --zoo $(ZOO) --validate-data '$(VALIDATE_DATA)' --out $(ENSEMBLE_DIR) --budget $(BUDGET) \
	  $(if $(MEMBERS),--members $(MEMBERS) $(if $(WEIGHTS),--weights $(WEIGHTS),--tune-weights),--search $(BUDGET) --tune-weights)

infer: install
	$(PY) jobs/infer.py --model $(ENSEMBLE_DIR) --data '$(TEST_DATA)' --out $(SUBMISSION)
