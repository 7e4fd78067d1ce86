"""Where a stage's models run: device names (`auto` is CUDA when present) and dtype names to torch dtypes.

torch is imported inside each function, so the CLI and the driver start without it.
"""

from __future__ import annotations


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
