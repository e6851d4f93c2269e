# Every target creates or reuses the virtual environment in .venv.
# torch is pinned and installed first: an unpinned torch would pull several GB of CUDA wheels.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: venv demo test tutorials bench bench-quick docs lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(BIN)/python -m pip install --quiet -e ".[test,doc]"
	touch $(STAMP)

demo: venv
	$(BIN)/python demo/run_demo.py --out demo_output

# --dist loadfile: each test module runs on one worker, so a module-scoped fixture that trains
# a model is built once per run (not once per worker). One thread per worker for every thread
# pool (OpenMP of torch, scikit-learn and numba; OpenBLAS): idle pool threads left spinning by
# one library slowed another's training many-fold on two cores.
TEST_THREADS := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
test: venv
	$(TEST_THREADS) $(BIN)/python -m pytest -n 2 --dist loadfile --durations=15
	$(BIN)/sphinx-build -M html docs docs/_build -E -W --keep-going -q

# Run every tutorial in full and store its outputs in the notebook (tens of minutes on two
# CPU cores). The test suite runs them in quick mode (SCSALIENT_TUTORIAL_QUICK=1,
# tests/test_tutorials.py); one notebook: make tutorials NOTEBOOKS=sctab.ipynb
NOTEBOOKS ?=
tutorials: venv
	$(BIN)/python tutorials/execute.py $(NOTEBOOKS)

bench: venv
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run.py --budget full

bench-quick: venv
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run.py --budget quick --out benchmarks/results/quick

docs: venv
	$(BIN)/sphinx-build -M html docs docs/_build -E -W --keep-going

lint: venv
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/ruff check src tests benchmarks demo
	$(BIN)/ruff format --check src tests benchmarks demo

clean:
	rm -rf $(VENV) docs/_build demo_output
