# Two commands on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench wheel clean results

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch/torchvision are pinned to the builds that install from local disk.
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check vsa_search tests benchmarks
	# The architecture contract (pyproject.toml [tool.importlinter]): imports only go downward.
	$(BIN)/lint-imports
	# pytest exits 5 when it collects no tests: report it rather than fail the build.
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo 'pytest: no tests collected'; exit 0; fi; exit $$rc

demo: $(STAMP)
	$(BIN)/python -m vsa_search.demo

lint: $(STAMP)
	$(BIN)/ruff check vsa_search tests benchmarks
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/regions.py

# A fresh build/ each time: setuptools would otherwise carry models since removed from weights/.
wheel: $(STAMP)
	rm -rf build dist
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .
	ls -l dist

clean:
	rm -rf $(VENV) build dist *.egg-info

# docs/RESULTS.md from the JSON the evaluations and benchmarks write into docs/results/.
results:
	$(PY) benchmarks/results.py
