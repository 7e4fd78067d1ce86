"""Fixtures for the trainer: tiny frozen models and small shards written here, following the shard contract.

Shards are real WebDataset tars (``<key>.<ext>`` members) with ``index.json``: 64 px samples whose mask and
sketch latents are fixed linear functions of the image latent (as a real mask predicts the face's layout),
so a tiny model has something to learn in a few hundred steps. A few samples lack the sketch, the mask or
both, as the contract allows.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VAES = {"flux": {"id": "tiny/vae-flux", "scaling_factor": 0.3611, "shift_factor": 0.1159, "channels": 16},
        "sd": {"id": "tiny/vae-sd", "scaling_factor": 0.18215, "shift_factor": None, "channels": 4}}
WORDS = ["a", "smiling", "young", "woman", "man", "with", "long", "short", "wavy", "brown", "black", "hair",
         "glasses", "earrings", "beard", "portrait", "photo", "of", "an", "old", "person", "blue", "eyes"]


def synthetic_mask(res: int, rng: np.random.Generator) -> np.ndarray:
    """A face-like label map: background, hair, skin ellipse, eyes, lips and sometimes an earring."""
    yy, xx = np.mgrid[0:res, 0:res] / res
    label = np.zeros((res, res), np.uint8)
    cy, cx = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
    label[((yy - cy + 0.1) / 0.42) ** 2 + ((xx - cx) / 0.36) ** 2 < 1] = 13  # hair
    label[((yy - cy) / 0.34) ** 2 + ((xx - cx) / 0.26) ** 2 < 1] = 1  # skin
    label[((yy - cy + 0.08) / 0.04) ** 2 + ((xx - cx + 0.1) / 0.06) ** 2 < 1] = 4
    label[((yy - cy + 0.08) / 0.04) ** 2 + ((xx - cx - 0.1) / 0.06) ** 2 < 1] = 5
    label[((yy - cy - 0.18) / 0.03) ** 2 + ((xx - cx) / 0.09) ** 2 < 1] = 11
    if rng.random() < 0.5:
        label[((yy - cy - 0.05) / 0.03) ** 2 + ((xx - cx - 0.3) / 0.02) ** 2 < 1] = 15  # earring: rare
    return label


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def make_sample(key: str, i: int, res: int, rng: np.random.Generator, has_mask=True, has_sketch=True) -> dict[str, bytes]:
    label = synthetic_mask(res, rng)
    image = (rng.random((res, res, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG")
    sample = {"jpg": buf.getvalue(), "captions.json": json.dumps(
        [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 12)))) for _ in range(10)]).encode()}
    if has_mask:
        sample["mask.png"] = _png(label)
    if has_sketch:
        sample["sketch.png"] = _png(np.where(label > 0, 255, 0).astype(np.uint8))
    for name, v in VAES.items():
        c, h = v["channels"], res // 8
        z = rng.normal(0.0, 1.0, (c, h, h)).astype(np.float32)
        sample[f"{name}.latent.npy"] = _npy(z.astype(np.float16))
        if has_mask:
            sample[f"{name}.mask_latent.npy"] = _npy((0.8 * z + 0.1).astype(np.float16))
        if has_sketch:
            sample[f"{name}.sketch_latent.npy"] = _npy((-0.6 * z[::-1] + 0.2).copy().astype(np.float16))
    counts = np.bincount(label.ravel(), minlength=19)[:19] if has_mask else np.zeros(19, np.int64)
    sample["json"] = json.dumps({"vae": VAES, "resolution": res, "class_pixels": counts.tolist(), "flags": [],
                                 "license": None}).encode()
    return sample


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tf:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime = len(data), 0
                tf.addfile(info, io.BytesIO(data))


def write_shards(root: Path, n_shards: int = 2, per_shard: int = 6, res: int = 64, seed: int = 0,
                 missing: dict[int, str] | None = None) -> Path:
    """`root/<split>-%06d.tar` + index.json; `missing` maps a global sample index to 'mask', 'sketch' or 'both'."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    missing = missing if missing is not None else {3: "sketch", 5: "mask", 8: "both"}
    entries, n = [], 0
    for s in range(n_shards):
        samples = []
        for _ in range(per_shard):
            gone = missing.get(n, "")
            samples.append((f"demo/{n:05d}", make_sample(f"demo/{n:05d}", n, res, rng,
                                                         has_mask=gone not in ("mask", "both"),
                                                         has_sketch=gone not in ("sketch", "both"))))
            n += 1
        path = root / f"train-{s:06d}.tar"
        write_tar(path, samples)
        data = path.read_bytes()
        entries.append({"name": path.name, "split": "train", "samples": per_shard, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    (root / "index.json").write_text(json.dumps({"shards": entries}))
    return root


@pytest.fixture(scope="session")
def tiny_train_models(tmp_path_factory) -> dict[str, Path]:
    """clip-text, vae-flux, vae-sd built by tools/tiny_train_models.py into a session tmp dir."""
    from tools.tiny_train_models import build_clip_text, build_vae

    root = tmp_path_factory.mktemp("tiny-train-models")
    build_clip_text(root / "clip-text")
    build_vae(root / "vae-flux", "flux")
    build_vae(root / "vae-sd", "sd")
    return {"clip-text": root / "clip-text", "vae-flux": root / "vae-flux", "vae-sd": root / "vae-sd"}


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    """Two shards of six 64 px samples (sample 3 has no sketch, 5 no mask, 8 neither)."""
    return write_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="session")
def sample_maker():
    """`make_sample(key, i, res, rng, has_mask, has_sketch)` -> {field: bytes} of one contract sample."""
    return make_sample


@pytest.fixture(scope="session")
def shard_writer():
    """`write_shards(root, n_shards, per_shard, res, seed, missing)` for tests that need their own shards."""
    return write_shards


@pytest.fixture
def tiny_cfg(shards, tiny_train_models, tmp_path):
    """A function: (out=None, shards=None, **sections) -> TrainConfig of the tiny model on the test shards."""

    def make(out: Path | None = None, shard_dir: Path | None = None, **sections):
        return tiny_config(shard_dir or shards, tiny_train_models["clip-text"], out or tmp_path / "run", **sections)

    return make


def tiny_config(shards: Path, clip: Path, out: Path, **sections):
    """A TrainConfig for the tiny model on the test shards; `sections` override e.g. objective={'kind': 'ddpm'}."""
    from train.config import build_config

    data = {
        "name": "test",
        "model": {"size": "tiny"},
        "objective": {"kind": "rf"},
        "data": {"shards": str(shards), "vae": "flux", "text_encoder": str(clip), "batch_size": 4,
                 "num_workers": 0, "shuffle_buffer": 8},
        "optim": {"lr": 1e-3, "warmup_steps": 10, "eight_bit": False},
        "train": {"out_dir": str(out), "max_steps": 20, "log_every": 10, "ckpt_every": 1000, "device": "cpu",
                  "ema_decay": 0.99},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return build_config(data)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and two threads fighting another process are 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
