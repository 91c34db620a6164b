# The README's two commands: `make run` and `make test`. Both create (or reuse) a virtual
# environment in $(VENV) and install what they need. TORCH pins the torch build installed first
# (these machines serve torch 2.14.1 / torchvision 0.29.1 from a local wheel cache).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: run test install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m genkit.recipes.reflow --preset toy --out runs/reflow-toy
	mkdir -p assets && cp runs/reflow-toy/samples/final.png assets/reflow_toy.png
	cp runs/reflow-toy/samples/trajectories.png assets/reflow_toy_trajectories.png

test: $(VENV)/.installed
	$(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
