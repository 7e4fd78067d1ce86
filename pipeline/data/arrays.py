"""Arrays as bytes, never pickled: `.npy` bytes, a deterministic uncompressed `.npz`, and their readers.

The latents stage writes one `.npz` per (VAE, key) whose members are the exact `.npy` bytes a shard
stores; the shard stage copies those members (bit-exact) and every reader loads with
`allow_pickle=False`.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def pack_npz(arrays: dict[str, bytes]) -> bytes:
    """An uncompressed npz from `.npy` bytes, with fixed timestamps (same arrays, same bytes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in arrays.items():
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def read_npz_members(path: Path) -> dict[str, bytes]:
    """kind -> exact `.npy` bytes of a latents file."""
    with zipfile.ZipFile(path) as z:
        return {n[:-4]: z.read(n) for n in z.namelist() if n.endswith(".npy")}


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
