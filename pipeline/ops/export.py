"""`facecurate export OUT --format mmface-dit`: the folder layout the public MMFace-DiT trainer reads.

Its loader (`PrecomputedUnifiedLatentDataset` in Bharath-K3/MMFace-DiT) takes a `latents_root` holding
`<dataset>/{image,mask,sketch}_latents/<id>.pt` and `<dataset>/text/<id>.txt`, counts a sample only
when all four exist, loads each `.pt` with `torch.load`, squeezes it and casts it to float32, and
expects latents already multiplied by the VAE scaling factor with no shift. So we write, from the
shards (the published artefact, so an export needs nothing else from the run):

- `<id>.pt`: one plain tensor (C, H/8, W/8) = stored mean x `scaling_factor` (loadable with
  `torch.load(weights_only=True)`: no pickled objects beyond a tensor);
- `text/<id>.txt`: the captions, one per line (newlines inside a caption become spaces).

`<id>` is the shard `__key__` (the percent-encoded key, a valid file name). A sample without a mask
or sketch is skipped by default (the trainer would skip it anyway); `--missing zeros` writes a zero
latent instead, which is what that trainer feeds for a dropped condition. Samples without captions
are always skipped: the trainer needs one to pick. Files are written atomically, so a killed export
re-run simply finishes.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.core.config import ConfigError
from pipeline.core.ledger import atomic_write_bytes
from pipeline.data.arrays import load_npy
from pipeline.data.wds import iter_tar, read_index

KINDS = (("image", "latent"), ("mask", "mask_latent"), ("sketch", "sketch_latent"))


@dataclass
class ExportResult:
    """What an export wrote and skipped (for the summary).

    Args:
        root: the dataset folder written (`<to>/<dataset>`).
        vae: the VAE short name exported.
        written: samples with all four files written.
        skipped: samples not written, by reason (`no_captions`, `no_mask`, ...).
        zero_filled: conditions written as zeros (`--missing zeros`), by kind.
    """

    root: Path
    vae: str
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    zero_filled: Counter = field(default_factory=Counter)


def _tensor_bytes(z: np.ndarray, scale: float, dtype: str) -> bytes:
    import torch

    t = torch.from_numpy((z.astype(np.float32) * np.float32(scale)).astype(dtype)).contiguous()
    buf = io.BytesIO()
    torch.save(t, buf)
    return buf.getvalue()


def export_mmface(out: Path, dest: Path, vae: str | None = None, splits: tuple[str, ...] = ("train",),
                  dataset: str | None = None, dtype: Literal["float32", "float16"] = "float32",
                  missing: Literal["skip", "zeros"] = "skip", advance=None) -> ExportResult:
    """Write `dest/<dataset>/...` from the shards of the run in `out` (module docstring)."""
    index = read_index(out / "shards")
    vaes = index.get("vaes") or {}
    if not vaes:
        raise ConfigError(f"{out}/shards hold no VAE latents: run `facecurate latents {out}`, "
                          f"then `facecurate shard {out}`")
    vae = vae or ("flux" if "flux" in vaes else sorted(vaes)[0])
    if vae not in vaes:
        raise ConfigError(f"--vae {vae}: the shards have {', '.join(sorted(vaes))}")
    unknown = [s for s in splits if s not in index["splits"]]
    if unknown:
        raise ConfigError(f"--split {', '.join(unknown)}: the shards have {', '.join(index['splits'])}")
    root = dest / (dataset or _run_name(out))
    result = ExportResult(root, vae)
    for entry in (e for e in index["shards"] if e["split"] in splits):
        for name, f in iter_tar(out / "shards" / entry["name"]):
            _export_sample(root, name, f, vae, dtype, missing, result)
            if advance:
                advance(1)
    # the run as a path relative to the export (no absolute local path in a folder that may be published)
    summary = {"source": os.path.relpath(out.resolve(), root.resolve()), "vae": vae, "vae_info": vaes[vae], "splits": list(splits), "dtype": dtype,
               "scaling": "z * scaling_factor (no shift), as MMFace-DiT's loader expects", "missing": missing,
               "written": result.written, "skipped": dict(result.skipped),
               "zero_filled": dict(result.zero_filled)}
    atomic_write_bytes(root / "export.json", (json.dumps(summary, indent=1) + "\n").encode())
    return result


def _export_sample(root: Path, name: str, f: dict[str, bytes], vae: str, dtype: str, missing: str,
                   result: ExportResult) -> None:
    meta = json.loads(f["json"])
    info = meta.get("vae", {}).get(vae)
    if info is None or f"{vae}.latent.npy" not in f:
        result.skipped["no_latents"] += 1
        return
    captions = [" ".join(c.split()) for c in json.loads(f.get("captions.json", b"[]"))]
    captions = [c for c in captions if c]
    if not captions:
        result.skipped["no_captions"] += 1
        return
    image = load_npy(f[f"{vae}.latent.npy"])
    arrays = {}
    for kind, field_name in KINDS:
        data = f.get(f"{vae}.{field_name}.npy")
        if data is not None:
            arrays[kind] = load_npy(data)
        elif missing == "zeros":
            arrays[kind] = np.zeros_like(image)
            result.zero_filled[kind] += 1
        else:
            result.skipped[f"no_{kind}"] += 1
            return
    for kind, z in arrays.items():
        data = _tensor_bytes(z, info["scaling_factor"], dtype)
        atomic_write_bytes(root / f"{kind}_latents" / f"{name}.pt", data)
    atomic_write_bytes(root / "text" / f"{name}.txt", ("\n".join(captions) + "\n").encode())
    result.written += 1


def _run_name(out: Path) -> str:
    import yaml

    path = out / "manifest.resolved.yaml"
    name = None
    if path.exists():
        name = ((yaml.safe_load(path.read_text()) or {}).get("manifest") or {}).get("name")
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in (name or out.name)) or "facecurate"

