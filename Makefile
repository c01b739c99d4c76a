# The two commands: `make demo` (the Streamlit demo) and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medvit-installed

.PHONY: demo test venv demo-models bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the only torch that installs here without a multi-GB download
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# make demo PORT=8600 serves on another port (default: $STREAMLIT_SERVER_PORT, else 8501)
PORT ?=
demo: $(STAMP)
	$(VENV)/bin/medvit demo $(if $(PORT),--port $(PORT))

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info

# ---- demo-models (owner: app) -------------------------------------------------------------------------
# `make demo-models` regenerates the embedded demo models in app/demo_models/ from the development pools
# ($(POOLS), see its README) and the committed configs experiments/configs/demo_*.yaml:
#   * ImageNet tf_efficientnet_lite0 fine-tuned per dataset (busi, ham10000, eyepacs): the page's defaults;
#   * vvt_tiny and acc_vit_tiny on BUSI, each trained from scratch AND distilled from the BUSI lite0
#     (DeiT-style soft targets); `medvit demo-export` keeps the one with the higher validation macro F1
#     (at each run's kept epoch; the test split plays no part in the choice) and records both runs'
#     scores in selection.json (the page's model card shows them).
# `medvit train` ends with the test-split evaluation and report/ (per-class metrics with bootstrap CIs);
# `medvit demo-export` copies model.json, config.yaml, metrics.csv, report/ and fp16 best.safetensors.
# Runs are written to $(DEMO_RUNS) (git-ignored). On a GPU: make demo-models DEMO_SET='--set device=cuda'.
POOLS ?= ../shared/datasets/pools
DEMO_RUNS ?= runs/demo_models
DEMO_OUT ?= app/demo_models
DEMO_SET ?=
DEMO_MEDVIT := $(VENV)/bin/medvit

# $(1) config stem, $(2) run name, $(3) pool folder, $(4) extra options
define demo_train
	rm -rf $(DEMO_RUNS)/$(2)
	@echo "[$$(date -u +%H:%M:%S)] training $(2)"
	$(DEMO_MEDVIT) train --config experiments/configs/$(1).yaml --out $(DEMO_RUNS)/$(2) \
		--set root=$(POOLS)/$(3) $(4) $(DEMO_SET)
endef

demo-models: $(STAMP)
	test -d $(POOLS) || { echo "POOLS=$(POOLS) not found; pass the pools folder: make demo-models POOLS=..."; exit 1; }
	$(call demo_train,demo_busi_lite0,busi_lite0,busi_256,)
	$(call demo_train,demo_ham10000_lite0,ham10000_lite0,ham10000_200x150,)
	$(call demo_train,demo_eyepacs_lite0,eyepacs_lite0,eyepacs_256,)
	$(call demo_train,demo_busi_vvt_tiny_scratch,busi_vvt_tiny_scratch,busi_256,)
	$(call demo_train,demo_busi_vvt_tiny_distill,busi_vvt_tiny_distill,busi_256,--set distill.teacher=$(DEMO_RUNS)/busi_lite0)
	$(call demo_train,demo_busi_acc_vit_tiny_scratch,busi_acc_vit_tiny_scratch,busi_256,)
	$(call demo_train,demo_busi_acc_vit_tiny_distill,busi_acc_vit_tiny_distill,busi_256,--set distill.teacher=$(DEMO_RUNS)/busi_lite0)
	rm -rf $(DEMO_OUT) && mkdir -p $(DEMO_OUT)
	for d in busi ham10000 eyepacs; do \
		$(DEMO_MEDVIT) demo-export $(DEMO_RUNS)/$${d}_lite0 --out $(DEMO_OUT)/$${d}_lite0 --default || exit 1; \
	done
	for m in vvt_tiny acc_vit_tiny; do \
		$(DEMO_MEDVIT) demo-export $(DEMO_RUNS)/busi_$${m}_scratch $(DEMO_RUNS)/busi_$${m}_distill \
			--out $(DEMO_OUT)/busi_$${m} || exit 1; \
	done
	@echo "[$$(date -u +%H:%M:%S)] demo models in $(DEMO_OUT):" && du -sh $(DEMO_OUT)/*
# ---- end of demo-models -------------------------------------------------------------------------------
