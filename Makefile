# Two commands on a fresh machine: `make demo` (whole pipeline on the digital twin -> report)
# and `make test`. Both create .venv from requirements.txt when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# --- demo settings (override on the command line, e.g. `make demo DEMO_PATCHES=10`) ---
RESULTS ?= results
TWIN ?= data/twin_demo
WORKERS ?= 2
# patches per ROI used by the extractors (the centers file always holds 10 per ROI)
DEMO_PATCHES ?= 2
# SwinUNETR (~0.9 s/patch) and CT-FM (~0.3 s/patch on a 2-core CPU): FBP series of the first
# repetition, 1 patch per ROI (390 patches)
SWIN_DEMO_FLAGS ?= --recons FBP --repetitions 1 --patches-per-roi 1
CTFM_DEMO_FLAGS ?= --recons FBP --repetitions 1 --patches-per-roi 1
# the study's CNN weights are private: `cnn/pretrain_cnn.py` pretrains it on a separate twin (skips if done)
CNN_WEIGHTS ?= cnn/weights/shallow_cnn.pt
# segmentation dose robustness (segmentation/): a built-in U-Net and a CNN denoiser trained on a separate
# twin (data/twin_segtrain, other seeds and texture; both skip when current), then 2 scanners x 1 repetition
# x 5 dose levels x 3 denoisers (none tv cnn), native + simulated contrast; `--study` for the study's size
SEG_WEIGHTS ?= segmentation/weights/builtin_unet.pt
DENOISER_WEIGHTS ?= segmentation/weights/cnn_denoiser.pt
# Swin and CT-FM load swin/weights/model_swinvit.pt and ct-fm/weights/ct_fm_feature_extractor when present
# (see README); without them they run with seeded random weights, labelled "untrained" everywhere
DEEP_FLAGS ?= --allow-untrained
UMAP_EPOCHS ?= 200
# analysis protocol of every step (toolkit | study | dataset-paper, ctdose/protocols.py): patch size,
# ICC, UMAP and classification defaults; e.g. `make demo PROTOCOL=dataset-paper RESULTS=results_dp`
PROTOCOL ?= toolkit
# Tables 3-5 bin-shrink (the paper's 4; the demo twin's 81-101 slices leave 20-25 after it)
SCANNER_SHRINK ?= 4

.PHONY: venv demo test bench clean ctorg organmnist3d

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	time $(PY) data/make_twin.py --preset demo --out $(TWIN) --workers $(WORKERS)
	time $(PY) data/prepare.py --data $(TWIN) --results $(RESULTS) --workers $(WORKERS)
	time $(PY) analyze/series_qc.py --results $(RESULTS)
	time $(PY) data/size_dose.py --results $(RESULTS) --workers $(WORKERS) --slice-step 10
	time $(PY) data/patch_centers.py --results $(RESULTS)
	time $(PY) radiomics/extract_radiomics.py --results $(RESULTS) --protocol $(PROTOCOL) --patches-per-roi $(DEMO_PATCHES) --workers $(WORKERS)
	time $(PY) cnn/pretrain_cnn.py --out $(CNN_WEIGHTS) --workers $(WORKERS)
	time $(PY) cnn/extract_cnn.py --results $(RESULTS) --protocol $(PROTOCOL) --weights $(CNN_WEIGHTS) --patches-per-roi $(DEMO_PATCHES)
	time $(PY) swin/extract_swin.py --results $(RESULTS) --protocol $(PROTOCOL) $(DEEP_FLAGS) $(SWIN_DEMO_FLAGS)
	time $(PY) ct-fm/extract_ctfm.py --results $(RESULTS) --protocol $(PROTOCOL) $(DEEP_FLAGS) $(CTFM_DEMO_FLAGS)
	time $(PY) analyze/icc.py --results $(RESULTS) --protocol $(PROTOCOL)
	time $(PY) analyze/umap_plots.py --results $(RESULTS) --protocol $(PROTOCOL) --epochs $(UMAP_EPOCHS) --workers $(WORKERS)
	time $(PY) analyze/classify.py --results $(RESULTS) --protocol $(PROTOCOL) --workers $(WORKERS)
	time $(PY) analyze/harmonize.py --results $(RESULTS) --workers $(WORKERS)
	time $(PY) analyze/image_metrics.py --results $(RESULTS) --workers $(WORKERS) --scanner-shrink $(SCANNER_SHRINK)
	time $(PY) analyze/dose_effects.py --results $(RESULTS) --workers $(WORKERS)
	time $(PY) segmentation/train_builtin.py --out $(SEG_WEIGHTS) --workers $(WORKERS)
	time $(PY) segmentation/train_denoiser.py --out $(DENOISER_WEIGHTS) --workers $(WORKERS)
	time $(PY) segmentation/dose_robustness.py --data $(TWIN) --results $(RESULTS) --builtin-weights $(SEG_WEIGHTS) --cnn-weights $(DENOISER_WEIGHTS) --workers $(WORKERS)
	$(PY) analyze/report.py --results $(RESULTS)

test: $(STAMP)
	$(PY) -m pytest -q tests

# the same extractors on other datasets (not part of the demo; download them first, README "Other datasets")
CTORG ?= data/ctorg
ORGANMNIST3D ?= data/medmnist/organmnist3d_64.npz

ctorg: $(STAMP)
	$(PY) radiomics/extract_radiomics.py --dataset ctorg --dataset-path $(CTORG) --results $(RESULTS)/ctorg --workers $(WORKERS)
	$(PY) cnn/extract_cnn.py --dataset ctorg --dataset-path $(CTORG) --results $(RESULTS)/ctorg --weights $(CNN_WEIGHTS)
	$(PY) swin/extract_swin.py --dataset ctorg --dataset-path $(CTORG) --results $(RESULTS)/ctorg $(DEEP_FLAGS)
	$(PY) ct-fm/extract_ctfm.py --dataset ctorg --dataset-path $(CTORG) --results $(RESULTS)/ctorg $(DEEP_FLAGS)
	$(PY) analyze/organ_classify.py --results $(RESULTS)/ctorg
	$(PY) analyze/report.py --results $(RESULTS)/ctorg

organmnist3d: $(STAMP)
	$(PY) radiomics/extract_radiomics.py --dataset organmnist3d --dataset-path $(ORGANMNIST3D) --results $(RESULTS)/organmnist3d --workers $(WORKERS)
	$(PY) cnn/extract_cnn.py --dataset organmnist3d --dataset-path $(ORGANMNIST3D) --results $(RESULTS)/organmnist3d --weights $(CNN_WEIGHTS)
	$(PY) swin/extract_swin.py --dataset organmnist3d --dataset-path $(ORGANMNIST3D) --results $(RESULTS)/organmnist3d $(DEEP_FLAGS)
	$(PY) ct-fm/extract_ctfm.py --dataset organmnist3d --dataset-path $(ORGANMNIST3D) --results $(RESULTS)/organmnist3d $(DEEP_FLAGS)
	$(PY) analyze/organ_classify.py --results $(RESULTS)/organmnist3d
	$(PY) analyze/report.py --results $(RESULTS)/organmnist3d

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(RESULTS)
