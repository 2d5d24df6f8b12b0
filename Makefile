# The two commands a new user needs: `make demo` and `make test`. Both set up what they need first.
export BENCH_VLLM_PYTHON ?= $(CURDIR)/.vllm-venv/bin/python
# Offline copies of the datasets (HumanEval+, MMLU, calibration samples) when they sit beside the
# checkout; without them the packs load from the evalplus release and the hub as usual.
SHARED_DATA := $(wildcard $(CURDIR)/../shared/data)
ifneq ($(SHARED_DATA),)
export BENCH_DATA_DIR ?= $(abspath $(SHARED_DATA))
export HUMANEVAL_OVERRIDE_PATH ?= $(BENCH_DATA_DIR)/humanevalplus/HumanEvalPlus-v0.1.10.jsonl.gz
endif

.PHONY: setup demo test lint
setup:
	./scripts/setup.sh

demo: setup
	./scripts/demo.sh

test: setup
	.venv/bin/python -m pytest -q

lint: setup
	./scripts/lint.sh
