# facecurate: `make demo` and `make test` set everything up on a fresh clone (CPU, offline).
# Exact CPU pins live here; pyproject.toml has lower bounds only, so a GPU machine keeps its own torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= .cache
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# pyfacer pulls opencv-python; keep both OpenCV wheels on 4.x (OpenCV 5 ships no Haar cascades).
CPU_PINS := $(TORCH_PINS) "opencv-python-headless<5" "opencv-python<5"
STAMP := $(VENV)/.facecurate-setup
export FACECURATE_CACHE := $(abspath $(CACHE))
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE := 1

.PHONY: setup data models demo test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q $(CPU_PINS) -e ".[dev]"
	touch $@

data: setup
	$(PY) tools/make_demo_data.py --out $(CACHE)/demo

models: setup
	$(PY) tools/make_tiny_models.py --out $(CACHE)/tiny-models

demo: data models
	$(VENV)/bin/facecurate run manifests/demo.yaml
	$(VENV)/bin/facecurate audit-captions demo_out
	$(VENV)/bin/facecurate train manifests/train/tiny.yaml
	$(VENV)/bin/facecurate sample runs/tiny -c "a smiling woman with short dark hair" \
		--mask demo_out/masks/photos/astronaut.png --steps 20 --n 4 --out runs/tiny/samples.png

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
