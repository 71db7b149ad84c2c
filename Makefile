# The two commands of the README, plus what they stand on.
#   make demo   set up everything on a fresh machine, then run the main job
#   make test   set up everything on a fresh machine, then run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test install models lint proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch is pinned to its CPU build (see pyproject.toml); the rest resolves around it
	$(BIN)/python -m pip install --quiet -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

models: $(STAMP)
	$(BIN)/feddetox models pull smollm2-135m-instruct minilm-l6

demo: models
	$(BIN)/feddetox simulate --config configs/demo.toml

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

proto: $(STAMP)
	$(BIN)/python scripts/gen_proto.py

clean:
	rm -rf $(VENV) build *.egg-info
