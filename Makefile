# Set-up and everyday commands. Two of them do everything on a fresh machine:
#   make demo   -> create .venv, install, build the bundled demo dataset, run participant + group
#   make test   -> create .venv, install with test extras, run the test suite
# On a machine without an NVIDIA GPU the CPU build of torch is pinned through constraints-cpu.txt
# (the one place that choice is made); with a GPU, pip's default CUDA build is used.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS ?= $(shell command -v nvidia-smi >/dev/null 2>&1 || echo "-c constraints-cpu.txt")
DEMO_OUT ?= demo

.PHONY: install demo test clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install $(CONSTRAINTS) -e '.[test,dask]'
	touch $@

demo: install
	NO_ET=1 NIPYPE_NO_ET=1 $(BIN)/l2s-demo --output $(DEMO_OUT)

test: install
	NO_ET=1 NIPYPE_NO_ET=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO_OUT) work
