"""Shared fixtures: the demo data and tiny models, built once into the cache folder (like `make demo`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FACECURATE_CACHE", ROOT / ".cache"))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The demo dataset (tools/make_demo_data.py), reused when current."""
    from tools import make_demo_data

    out = CACHE / "demo"
    make_demo_data.main(["--out", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_model():
    """A function: name -> folder of that tiny model (tools/make_tiny_models.py), built on first use."""
    from tools import make_tiny_models

    def get(name: str) -> Path:
        return make_tiny_models.build(name, CACHE / "tiny-models")

    return get
