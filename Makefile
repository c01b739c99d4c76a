# The two commands: `make demo` (the Streamlit demo) and `make test`. Both create .venv when missing.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medvit-installed

.PHONY: demo test test-fast venv demo-models bench clean

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

# make test: the whole suite (what CI runs); make test-fast: without the tests marked slow, for the edit loop
test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info

# ---- demo-models (owner: app) -------------------------------------------------------------------------
# `make demo-models` regenerates the embedded demo models in medvit/assets/demo_models/ from the development pools
# ($(POOLS), see its README) and the committed configs experiments/configs/{demo_*,pretrain_*}.yaml (a few base
# recipes and their variants, `base:` plus the keys that change; experiments/configs/README.md):
#   * ImageNet tf_efficientnet_lite0 (bundled weights), all layers fine-tuned per dataset (busi, ham10000, eyepacs;
#     for eyepacs also with SORD soft ordinal labels, the better on validation QWK kept);
#   * `medvit pretrain` of vvt_nano (medvit's narrow VVT-Tiny): ImageNet EfficientNet-Lite2 distilled stage by stage
#     on the pools' unlabeled train images (experiments/configs/pretrain_vvt_nano.yaml);
#   * pyramid ViTs with KD from that dataset's lite0: vvt_tiny and acc_vit_nano for BUSI (from random init; vvt_tiny
#     also with a longer, gentler schedule continued for a second one, ACC-ViT also continued for a second one;
#     both also from a pretrain run whose teacher is the fine-tuned BUSI lite0: pretrain_{vvt_tiny,acc_vit_nano}_busi.yaml),
#     vvt_nano for HAM10000 (from the pretrain run, then a class-balanced second stage), vvt_nano for EyePACS (from
#     a pretrain run whose teacher is the fine-tuned EyePACS lite0: experiments/configs/pretrain_vvt_nano_eyepacs.yaml;
#     three recipes, one on SORD ordinal labels, and a fourth from a longer pretrain run whose teacher is the SORD
#     lite0, pretrain_vvt_nano_eyepacs_ordinal.yaml; the best on validation QWK kept);
#   * vvt_nano on BUSI from random init AND from the pretrain run, same recipe: the scratch-vs-distilled comparison
#     of docs/pretraining.md (experiments/pretrain_comparison.py), not embedded (the 50 MB budget).
#   The test split plays no part in any choice: epochs and defaults are chosen on validation.
# `medvit demo-export` stores per-channel int8 weights and measures them again as stored (validation and test
# predictions, calibration, report/); `medvit demo-defaults` makes each dataset's best model on validation the
# page's default. docs/pretraining.md's comparison is rewritten by experiments/pretrain_comparison.py.
# Runs are written to $(DEMO_RUNS) (git-ignored). On a GPU: make demo-models DEMO_SET='--set device=cuda'.
POOLS ?= ../shared/datasets/pools
DEMO_RUNS ?= runs/demo_models
DEMO_OUT ?= medvit/assets/demo_models
DEMO_SET ?=
DEMO_MEDVIT := $(VENV)/bin/medvit

# $(1) pretrain config stem, $(2) run name under runs/pretrain, $(3) teacher run under $(DEMO_RUNS), $(4) pool folder
define demo_pretrain_from_run
	rm -rf runs/pretrain/$(2)
	$(DEMO_MEDVIT) pretrain --config experiments/configs/$(1).yaml --out runs/pretrain/$(2) \
		--set teacher=$(DEMO_RUNS)/$(3) --set data.0.root=$(POOLS)/$(4) $(DEMO_SET)
endef

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
	$(call demo_train,demo_eyepacs_lite0_ordinal,eyepacs_lite0_ordinal,eyepacs_256,)
	rm -rf runs/pretrain/vvt_nano
	$(DEMO_MEDVIT) pretrain --config experiments/configs/pretrain_vvt_nano.yaml --out runs/pretrain/vvt_nano \
		--set data.0.root=$(POOLS)/busi_256 --set data.1.root=$(POOLS)/ham10000_200x150 \
		--set data.2.root=$(POOLS)/eyepacs_256 $(DEMO_SET)
	$(call demo_train,demo_busi_vvt_tiny,busi_vvt_tiny,busi_256,)
	$(call demo_train,demo_busi_vvt_tiny_long,busi_vvt_tiny_long,busi_256,)
	$(call demo_train,demo_busi_vvt_tiny_long_stage2,busi_vvt_tiny_long_stage2,busi_256,\
		--set pretrained=$(DEMO_RUNS)/busi_vvt_tiny_long/best.safetensors)
	$(call demo_train,demo_busi_acc_vit_nano,busi_acc_vit_nano,busi_256,)
	$(call demo_train,demo_busi_acc_vit_nano_longer,busi_acc_vit_nano_longer,busi_256,\
		--set pretrained=$(DEMO_RUNS)/busi_acc_vit_nano/best.safetensors)
	$(call demo_pretrain_from_run,pretrain_vvt_tiny_busi,vvt_tiny_busi,busi_lite0,busi_256)
	$(call demo_train,demo_busi_vvt_tiny_teacher,busi_vvt_tiny_teacher,busi_256,)
	$(call demo_pretrain_from_run,pretrain_vvt_tiny_busi_long,vvt_tiny_busi_long,busi_lite0,busi_256)
	$(call demo_train,demo_busi_vvt_tiny_teacher_long,busi_vvt_tiny_teacher_long,busi_256,)
	$(call demo_pretrain_from_run,pretrain_acc_vit_nano_busi,acc_vit_nano_busi,busi_lite0,busi_256)
	$(call demo_train,demo_busi_acc_vit_nano_teacher,busi_acc_vit_nano_teacher,busi_256,)
	$(call demo_train,demo_ham10000_vvt_nano,ham10000_vvt_nano,ham10000_200x150,)
	$(call demo_train,demo_ham10000_vvt_nano_balanced,ham10000_vvt_nano_balanced,ham10000_200x150,\
		--set pretrained=$(DEMO_RUNS)/ham10000_vvt_nano/best.safetensors)
	$(call demo_pretrain_from_run,pretrain_vvt_nano_eyepacs,vvt_nano_eyepacs,eyepacs_lite0,eyepacs_256)
	$(call demo_train,demo_eyepacs_vvt_nano,eyepacs_vvt_nano,eyepacs_256,)
	$(call demo_train,demo_eyepacs_vvt_nano_gentle,eyepacs_vvt_nano_gentle,eyepacs_256,)
	$(call demo_train,demo_eyepacs_vvt_nano_ordinal,eyepacs_vvt_nano_ordinal,eyepacs_256,)
	$(call demo_pretrain_from_run,pretrain_vvt_nano_eyepacs_ordinal,vvt_nano_eyepacs_ordinal,eyepacs_lite0_ordinal,eyepacs_256)
	$(call demo_train,demo_eyepacs_vvt_nano_ordinal_teacher,eyepacs_vvt_nano_ordinal_teacher,eyepacs_256,)
	$(call demo_train,demo_busi_vvt_nano_scratch,busi_vvt_nano_scratch,busi_256,)
	$(call demo_train,demo_busi_vvt_nano_pretrained,busi_vvt_nano_pretrained,busi_256,)
	rm -rf $(DEMO_OUT) && mkdir -p $(DEMO_OUT)
	for pair in busi_lite0 ham10000_lite0 ham10000_vvt_nano_balanced:ham10000_vvt_nano; do \
		run=$${pair%%:*}; folder=$${pair##*:}; \
		$(DEMO_MEDVIT) demo-export $(DEMO_RUNS)/$$run --out $(DEMO_OUT)/$$folder || exit 1; \
	done
	$(DEMO_MEDVIT) demo-export $(DEMO_RUNS)/busi_vvt_tiny $(DEMO_RUNS)/busi_vvt_tiny_long \
		$(DEMO_RUNS)/busi_vvt_tiny_long_stage2 $(DEMO_RUNS)/busi_vvt_tiny_teacher \
		$(DEMO_RUNS)/busi_vvt_tiny_teacher_long --out $(DEMO_OUT)/busi_vvt_tiny
	$(DEMO_MEDVIT) demo-export $(DEMO_RUNS)/busi_acc_vit_nano $(DEMO_RUNS)/busi_acc_vit_nano_longer \
		$(DEMO_RUNS)/busi_acc_vit_nano_teacher --out $(DEMO_OUT)/busi_acc_vit_nano
	$(DEMO_MEDVIT) demo-export $(DEMO_RUNS)/eyepacs_lite0 $(DEMO_RUNS)/eyepacs_lite0_ordinal --metric qwk \
		--out $(DEMO_OUT)/eyepacs_lite0
	$(DEMO_MEDVIT) demo-export $(DEMO_RUNS)/eyepacs_vvt_nano $(DEMO_RUNS)/eyepacs_vvt_nano_gentle \
		$(DEMO_RUNS)/eyepacs_vvt_nano_ordinal $(DEMO_RUNS)/eyepacs_vvt_nano_ordinal_teacher --metric qwk \
		--out $(DEMO_OUT)/eyepacs_vvt_nano
	$(DEMO_MEDVIT) demo-defaults $(DEMO_OUT)
	$(VENV)/bin/python experiments/pretrain_comparison.py --scratch $(DEMO_RUNS)/busi_vvt_nano_scratch \
		--distilled $(DEMO_RUNS)/busi_vvt_nano_pretrained
	{ echo "# Embedded demo models"; echo; \
	  echo "Written by \`make demo-models\` (\`medvit demo --models\`: every figure read from each model's report/, test split of its pool, weights as stored)."; \
	  echo; $(DEMO_MEDVIT) demo --models; } > docs/demo_models.md
	@echo "[$$(date -u +%H:%M:%S)] demo models in $(DEMO_OUT):" && du -sh $(DEMO_OUT)/*
# ---- end of demo-models -------------------------------------------------------------------------------
