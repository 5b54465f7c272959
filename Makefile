# raytrain8m — every target installs what it needs on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-install

.PHONY: install test test-fast demo sweep ensemble infer mlflow-ui clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv  # uv installs what pip would, in parallel (3 min with pip here)
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[dev]'
	touch $(STAMP)

test: install
	$(PY) -m pytest -x -q --timeout=900 --durations=25 tests

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

# --- sweep + zoo (jobs/sweep.py, jobs/zoo.py) ---
# make sweep [SWEEP_GRID=K4-H32,K8-H64 SWEEP_STEPS=120]: a small local K×H sweep on data/synth
# (made first if missing), then the zoo table. A second `make sweep` resumes $(SWEEP_OUT)
# (finishes what is unfinished); remove it to start over. On a cluster: jobs/sweep.py recipes.
SYNTH_DIR ?= data/synth
SWEEP_OUT ?= runs/sweep
SWEEP_GRID ?= K4-H32,K8-H32,K8-H64,K16-H64
SWEEP_CLASSES ?= 100
SWEEP_STEPS ?= 120
SWEEP_CHECKPOINT_EVERY ?= 30
SWEEP_LR ?= 1e-3
RUNS_DIR ?= runs

$(SYNTH_DIR)/synthetic.json: | $(STAMP)
	$(PY) jobs/synth.py --out $(SYNTH_DIR) --videos 2000 --classes $(SWEEP_CLASSES) --max-frames 100 --shards 4 --seed 0

sweep: install $(SYNTH_DIR)/synthetic.json
	$(PY) jobs/sweep.py $(if $(wildcard $(SWEEP_OUT)/sweep.json),--resume --out $(SWEEP_OUT),--grid $(SWEEP_GRID) \
	  --classes $(SWEEP_CLASSES) --train-data '$(SYNTH_DIR)/train*.tfrecord' \
	  --validate-data '$(SYNTH_DIR)/validate*.tfrecord' --out $(SWEEP_OUT) --max-steps $(SWEEP_STEPS) \
	  --checkpoint-every $(SWEEP_CHECKPOINT_EVERY) --lr $(SWEEP_LR))

mlflow-ui: install
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUNS_DIR))/mlflow.db --host 127.0.0.1 --port 5000

# --- the whole pipeline on the embedded default (jobs/demo.py) ---
# make demo [DEMO_SCALE=tiny|default|large] [BEYOND=1]: data reused between runs, runs/demo made anew
DEMO_SCALE ?= default

demo: install
	$(PY) jobs/demo.py --scale $(DEMO_SCALE) $(if $(BEYOND),--beyond)
