"""Content identities that key caches and fingerprints: what decides an output, as a short hash.

`digest` hashes values (prompt texts, sampling settings, cache-key parts); `file_identity` identifies a
model file or folder by sizes and the hashes of each file's head and tail; `model_revision` says what a
model id resolves to without loading it (a local folder's content hash, or the hub commit in the local
Hugging Face cache). A stage puts these in its fingerprint, so a changed prompt, model or weight file
makes exactly the affected outputs pending again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def digest(*parts: Any) -> str:
    """A short sha1 over `parts` (strings, or anything JSON-serialisable)."""
    h = hashlib.sha1()
    for p in parts:
        h.update((p if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str)).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:16]


# Files whose content decides what a local model generates (weights are fingerprinted by name and size:
# hashing gigabytes of safetensors on every run would cost more than the run).
_CONTENT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "chat_template.jinja", "chat_template.json", "processor_config.json",
                  "preprocessor_config.json", "special_tokens_map.json")


def local_revision(path: str | Path) -> str:
    """`local:<hash>` of a model folder: its config/tokenizer files and its weight files' names and sizes."""
    path = Path(path)
    h = hashlib.sha1()
    for name in sorted(os.listdir(path)):
        f = path / name
        if not f.is_file():
            continue
        if name in _CONTENT_FILES:
            h.update(name.encode() + b"\0" + f.read_bytes())
        elif name.endswith((".safetensors", ".bin", ".pt", ".gguf")):
            h.update(f"{name}\0{f.stat().st_size}".encode())
    return "local:" + h.hexdigest()[:12]


def model_revision(model: str, revision: str | None = None) -> str:
    """What a model id resolves to without loading it: a local folder's content hash, or a hub commit.

    For a hub id the commit comes from the local Hugging Face cache (offline, no network); when the
    model is not cached yet, the requested revision (or `main`) stands in until the engine loads it.
    """
    if Path(model).expanduser().is_dir():
        return local_revision(Path(model).expanduser())
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model, "config.json", revision=revision)
        if isinstance(found, str):
            return Path(found).parent.name  # .../snapshots/<commit>/config.json
    except Exception:  # noqa: BLE001 - an odd cache is not a reason to fail; fall back to the name
        pass
    return revision or "main"


def file_identity(path: Path) -> str:
    """A content identity for a model file or folder: sizes plus hashes of each file's head and tail.

    Cheap for multi-GB checkpoints, and it changes when a model is retrained in place (a path alone
    would not), so outputs made with the old weights become pending again.
    """
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha1()
    for f in files:
        if f.name.startswith("."):
            continue
        size = f.stat().st_size
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()[:16]
