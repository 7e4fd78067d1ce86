"""Build tiny random-weight copies of the real model architectures, offline, into a cache folder.

Tests and the demo run real code paths on these (the real classes, processors and tokenizers at toy
sizes): no hub, no network. Builders live in `tools/tiny/*.py`, each module exporting
`MODELS = {name: (version, build_fn)}`; a model is rebuilt only when its version changes (a `.stamp`
file in its folder records it), so re-running is instant.

Usage:
    python tools/make_tiny_models.py                 # build all into .cache/tiny-models
    python tools/make_tiny_models.py internvl3 --out /tmp/models
    python tools/make_tiny_models.py --list
"""

from __future__ import annotations

import argparse
import fcntl
import importlib
import os
import pkgutil
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(os.environ.get("FACECURATE_CACHE", ROOT / ".cache")) / "tiny-models"


def registry() -> dict[str, tuple[str, Callable[[Path], None]]]:
    """Every builder found in tools/tiny/ (name -> (version, build_fn))."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import tools.tiny

    found: dict[str, tuple[str, Callable[[Path], None]]] = {}
    for m in sorted(pkgutil.iter_modules(tools.tiny.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"tools.tiny.{m.name}")
        for name, spec in getattr(module, "MODELS", {}).items():
            if name in found:
                raise ValueError(f"tiny model {name!r} is defined twice")
            found[name] = spec
    return found


def build(name: str, out_root: Path = DEFAULT_OUT, force: bool = False) -> Path:
    """Build (or reuse) one tiny model; returns its folder."""
    models = registry()
    if name not in models:
        raise KeyError(f"unknown tiny model {name!r}; known: {', '.join(models)}")
    version, fn = models[name]
    out = Path(out_root) / name
    stamp = out / ".stamp"
    if not force and stamp.exists() and stamp.read_text() == version:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs build each model once
        if not force and stamp.exists() and stamp.read_text() == version:
            return out
        tmp = out.with_name(f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        fn(tmp)
        (tmp / ".stamp").write_text(version)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)  # a half-built model never sits under the real name
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="models to build (default: all)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    models = registry()
    if args.list:
        for n, (v, fn) in models.items():
            print(f"{n:20s} v{v:6s} {(fn.__doc__ or '').strip().splitlines()[0] if fn.__doc__ else ''}")
        return 0
    for n in args.names or list(models):
        t0 = time.monotonic()
        path = build(n, args.out, args.force)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        print(f"{n:20s} {size / 1e6:7.2f} MB  {time.monotonic() - t0:5.1f} s  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
