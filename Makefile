# The two front-door commands are `make demo` and `make test`; each builds .venv by itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test lint typecheck unit demo bench soak slow chaos clean screenshots test-ray bench-ray

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

test: lint typecheck unit  ## lint, type-check and run the test suite

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# mypy cannot follow setuptools' package-dir mapping, so it reads the sources through a
# link tree that spells the installed names (herder/store -> store, ...).
typecheck: $(STAMP)
	@mkdir -p build/typecheck/herder
	@for p in store actors runtime; do ln -sfn ../../../$$p build/typecheck/herder/$$p; done
	cd build/typecheck && ../../$(PY) -m mypy --config-file ../../pyproject.toml \
		-p herder.store -p herder.actors -p herder.runtime

unit: $(STAMP)
	$(PY) -m pytest

slow: $(STAMP)
	$(PY) -m pytest -m slow

chaos: $(STAMP)  ## SIGKILL a daemon 50 times under a mixed workload, then audit the store
	$(PY) -m pytest -m chaos -s

# Agents on Ray (the ray extra) are tested in their own venv, so `make test` never needs
# Ray (about 300 MB): one local cluster for the fast tests, one per child in the slow ones.
RAY_VENV := .venv-ray
RAY_PY := $(RAY_VENV)/bin/python
RAY_STAMP := $(RAY_VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(RAY_STAMP): pyproject.toml
	$(PYTHON) -m venv $(RAY_VENV)
	$(RAY_PY) -m pip install -q --upgrade pip
	$(RAY_PY) -m pip install -q -e '.[test,ray]'
	rm -f $(RAY_VENV)/.installed-* && touch $@

test-ray: $(RAY_STAMP)  ## the Ray host's tests (marker ray, slow ones included)
	$(RAY_PY) -m pytest -m ray tests

bench-ray: $(RAY_STAMP)  ## local vs Ray agents through herder (writes benchmarks/RESULTS.md)
	$(RAY_PY) benchmarks/ray_host.py $(BENCH_ARGS)

# rich is optional (plain text without it), so a failed install does not stop the demo.
$(VENV)/.demo-extra: $(STAMP)
	$(PY) -m pip install -q -e '.[demo]' || echo "rich not installed: plain output"
	touch $@

demo: $(VENV)/.demo-extra
	$(PY) -m herder.runtime demo

# The peers (DBOS, Huey) are optional: without them their rows say "skipped".
$(VENV)/.bench-extra: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]' || echo "peers not installed: reported as skipped"
	touch $@

# BENCH_ARGS=--quick for a run of a few minutes; the full run writes benchmarks/RESULTS.md.
bench: $(VENV)/.bench-extra  ## store commits, supervision, then herder vs its peers
	$(PY) benchmarks/store_commit.py
	$(PY) benchmarks/supervision.py
	$(PY) benchmarks/peers.py $(BENCH_ARGS)

soak: $(STAMP)  ## 100k workflows under faults: throughput, RSS and store size over time
	$(PY) benchmarks/soak.py $(SOAK_ARGS)

# The console's screenshots in docs/ (needs chromium and chromium-driver, as the tests do).
screenshots: $(STAMP)
	HERDER_SCREENSHOTS=docs/img $(PY) -m pytest tests/test_ui_browser.py -q

clean:
	rm -rf $(VENV) $(RAY_VENV) build .pytest_cache .mypy_cache .ruff_cache
