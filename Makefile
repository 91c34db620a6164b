# The README's two commands: `make run` and `make test`. Both create (or reuse) a virtual
# environment in $(VENV) and install what they need. TORCH pins the torch build installed first
# (these machines serve torch 2.14.1 / torchvision 0.29.1 from a local wheel cache).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (auto: one per CPU core; 0: run in this process)
TEST_JOBS ?= auto

.PHONY: run test install clean device-kit

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
	$(PY) -m pytest -q -n $(TEST_JOBS) $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache

# What a session on the GPU machine carries (it has torch, torchvision, torchdiffeq but no
# package index): wheels of the pure-Python dependencies it lacks, in .whl/, and the offline
# data archives, in .data/. Both folders are git-ignored; name them in the device call's
# `carry`. The commands that use them are in genkit/bench/suite.py.
DEVICE_WHEELS ?= diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0 tyro==1.0.17 \
	docstring_parser==0.18.0 typeguard==4.6.0 typing_extensions==4.16.0 torch_fidelity==0.4.0
SHARED_DATA ?= ../shared/data

device-kit:
	mkdir -p .whl .data
	python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 -d .whl $(DEVICE_WHEELS)
	cp -r $(SHARED_DATA)/mnist $(SHARED_DATA)/cifar10_jpg.tar.gz .data/
