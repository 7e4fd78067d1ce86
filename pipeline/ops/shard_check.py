"""The shard checks of `facecurate verify`: checksums, every field of every sample, keys against the ledger.

Each problem is one readable line naming the shard and the key. A shard is re-hashed and compared with
`index.json`; every sample's fields are decoded (JPEG, PNG, JSON, `.npy` without pickle) and checked
against the sample layout (sizes, single-channel label maps with ids 0..18 whose pixel counts match
`class_pixels`, float16 latents of the recorded channels, a latent for every mask and sketch); the
keys across all shards must be exactly the shard ledger's ok keys that are still in the index, once.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pipeline.core.ledger import OK, Ledger, sha256_file
from pipeline.core.stage import StageContext
from pipeline.data.arrays import load_npy
from pipeline.data.labels import NUM_CLASSES
from pipeline.data.wds import decode_key, iter_tar
from pipeline.ops.findings import Problem, card_front_matter

SHARD_RE = re.compile(r"^(.+)-(\d{6})\.tar$")
PER_SHARD = 20  # problems listed per shard before "... and N more"
KNOWN = {"jpg", "mask.png", "sketch.png", "captions.json", "json"}


def _image(data: bytes, mode: str, side: int, what: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.mode != mode or img.size != (side, side):
            w, h = img.size
            raise ValueError(f"{what} is {img.mode} {w}x{h}, expected {mode} {side}x{side}")
        return np.asarray(img)


def check_sample(name: str, f: dict[str, bytes], split: str, resolution: int) -> list[str]:
    """Problems of one sample (empty when every field decodes and matches the layout)."""
    out = []
    try:
        meta = json.loads(f["json"])
    except KeyError:
        return ["no json field"]
    except ValueError as e:
        return [f"json does not parse ({e})"]
    if decode_key(name) != meta.get("key"):
        out.append(f"__key__ {name} does not decode to json key {meta.get('key')!r}")
    if meta.get("split") != split:
        out.append(f"split {meta.get('split')!r} in a {split} shard")
    if meta.get("resolution") != resolution:
        out.append(f"resolution {meta.get('resolution')} != index resolution {resolution}")
    try:
        _image(f["jpg"], "RGB", resolution, "jpg")
        if "mask.png" in f:
            label = _image(f["mask.png"], "L", resolution, "mask.png")
            if int(label.max()) >= NUM_CLASSES:
                out.append(f"mask.png has label {int(label.max())} outside 0..{NUM_CLASSES - 1}")
            counts = np.bincount(label.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES].tolist()
            if counts != meta.get("class_pixels"):
                out.append("class_pixels in json do not match mask.png")
        if "sketch.png" in f:
            _image(f["sketch.png"], "L", resolution, "sketch.png")
        if "captions.json" in f:
            caps = json.loads(f["captions.json"])
            if not (isinstance(caps, list) and 0 < len(caps) <= 10 and all(isinstance(c, str) for c in caps)):
                out.append("captions.json is not a list of 1 to 10 strings")
    except KeyError:
        out.append("no jpg field")
    except Exception as e:  # noqa: BLE001 - every decode failure is a finding
        out.append(f"{type(e).__name__}: {e}")
    vaes = meta.get("vae") or {}
    expected = set(KNOWN)
    for vae, m in vaes.items():
        shape = (m.get("channels"), resolution // 8, resolution // 8)
        needs = (("latent", True), ("mask_latent", "mask.png" in f), ("sketch_latent", "sketch.png" in f))
        for kind, need in needs:
            field = f"{vae}.{kind}.npy"
            expected.add(field)
            if (field in f) != need:
                out.append(f"{field} {'missing' if need else 'present without its input'}")
            if field not in f:
                continue
            try:
                a = load_npy(f[field])
            except Exception as e:  # noqa: BLE001
                out.append(f"{field}: {type(e).__name__}: {e}")
                continue
            if a.dtype != np.float16 or a.shape != shape:
                out.append(f"{field} is {a.dtype} {a.shape}, expected float16 {shape}")
            elif not np.isfinite(a).all():
                out.append(f"{field} holds NaN or inf")
    unknown = sorted(set(f) - expected)
    if unknown:
        out.append(f"fields not in the layout: {', '.join(unknown)}")
    return out


def check_shards(out: Path, console: Console | None = None, depth: str = "full") -> tuple[list[str], int]:
    """(problems, checks) for `out/shards`, with a progress bar on `console`; nothing when no shards.
    `fast` re-hashes each shard and lists its members; `full` also decodes every field of every sample.
    The problems are `verify.Problem`s: repair deletes a broken shard (the next run writes it again)
    and redoes the samples whose fields are broken."""
    console = console or Console(stderr=True)
    with Progress(TextColumn("[bold]shards"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("shards", total=None)
        return _check(out, lambda n: progress.advance(task, n), lambda t: progress.update(task, total=t), depth)


def check_card(out: Path) -> str | None:
    """None when the dataset card exists and its YAML front matter parses, else the reason."""
    card = out / "shards" / "README.md"
    if not (out / "shards" / "index.json").exists():
        return None  # the shard stage did not finish; check_shards says so
    if not card.is_file():
        return f"{card} (the dataset card) is missing"
    try:
        text = card.read_text()
    except (OSError, UnicodeDecodeError) as e:
        return f"{card} does not read ({type(e).__name__})"
    if card_front_matter(text) is None:
        return f"{card}: the YAML front matter is missing or does not parse"
    return None


def _check(out: Path, advance: Callable[[int], Any], set_total: Callable[[int], Any],
           depth: str = "full") -> tuple[list[str], int]:
    shards, ledger = out / "shards", Ledger(out, "shards", on_corrupt="skip")
    repair = f"facecurate repair {out}"
    if not ledger.parts():
        return [], 0
    if not (shards / "index.json").exists():
        return [Problem("shards/index.json is missing: the last shard run did not finish; run it again",
                        repair, "shard", keys=(), remove=None)], 1
    try:
        index = json.loads((shards / "index.json").read_text())
        index["shards"], index["resolution"]  # noqa: B018 - the fields every check below needs
    except (ValueError, KeyError, TypeError, OSError) as e:
        return [Problem(f"shards/index.json does not parse ({type(e).__name__}: {e})", repair, "shard",
                        remove=shards / "index.json")], 1
    set_total(index.get("samples") or 0)
    problems, checks = [], 1
    for name, sha in sorted((index.get("files") or {}).items()):
        checks += 1
        path = shards / name
        if not path.is_file() or sha256_file(path) != sha:
            problems.append(Problem(f"shards/{name} is {'missing' if not path.is_file() else 'changed'} "
                                    "(sha256 differs from index.json); the shard stage writes it again",
                                    repair, "shard", remove=path if path.is_file() else None))
    listed = {e["name"] for e in index["shards"]}
    on_disk = {p.name for p in shards.iterdir() if SHARD_RE.match(p.name)}
    problems += [Problem(f"shards/{n}: on disk but not in index.json", repair, "shard", remove=shards / n)
                 for n in sorted(on_disk - listed)]
    seen: Counter = Counter()
    for e in index["shards"]:
        path, checks = shards / e["name"], checks + 1
        if not path.exists():
            problems.append(Problem(f"shards/{e['name']}: listed in index.json but missing", repair, "shard",
                                    remove=shards / "index.json"))
            continue
        if path.stat().st_size != e["bytes"] or sha256_file(path) != e["sha256"]:
            problems.append(Problem(f"shards/{e['name']}: sha256 differs from index.json (corrupt or modified)",
                                    repair, "shard", remove=path))
        found, n = [], 0
        try:
            for name, fields in iter_tar(path):
                n, checks = n + 1, checks + 1
                key = decode_key(name)
                seen[key] += 1
                if depth == "full":
                    found += [Problem(f"shards/{e['name']}: {key}: {p}", repair, "shard", keys=(key,), remove=path)
                              for p in check_sample(name, fields, e["split"], index["resolution"])]
                advance(1)
        except (tarfile.TarError, ValueError, OSError) as err:
            found.append(Problem(f"shards/{e['name']}: unreadable after {n} samples ({err})", repair, "shard",
                                 remove=path))
        if n != e["samples"]:
            found.append(Problem(f"shards/{e['name']}: {n} samples, index.json says {e['samples']}", repair,
                                 "shard", remove=path))
        problems += found[:PER_SHARD] + ([Problem(f"shards/{e['name']}: ... and {len(found) - PER_SHARD} more",
                                                  repair, "shard", keys=tuple(k for p in found[PER_SHARD:]
                                                                               for k in p.keys), remove=path)]
                                         if len(found) > PER_SHARD else [])
    checks += 1
    dups = sorted(k for k, c in seen.items() if c > 1)
    if dups:
        problems.append(Problem(f"{len(dups)} key(s) in more than one sample, e.g. {dups[0]}", repair, "shard",
                                remove=shards / "index.json"))
    t = ledger.read(["key", "status"])
    # the keys the shard stage takes now: after `faces`, its kept faces (a photo it dropped, or a run's
    # rows from before faces was added, stays in the ledger but is no longer sharded)
    index_ok = set(StageContext(out, on_corrupt="skip").index(["key"])["key"].to_pylist())
    expected = {k for k, s in zip(t["key"].to_pylist(), t["status"].to_pylist(), strict=True)
                if s == OK and k in index_ok}
    for what, keys in (("in the shard ledger but in no shard (a shard run that did not finish? run it again)",
                        expected - set(seen)),
                       ("in a shard but not an ok key of the shard ledger", set(seen) - expected)):
        if keys:
            problems.append(Problem(f"{len(keys)} key(s) {what}, e.g. {sorted(keys)[0]}", repair, "shard",
                                    remove=shards / "index.json"))
    if sum(seen.values()) != index.get("samples"):
        problems.append(Problem(f"index.json says {index.get('samples')} samples, "
                                f"the shards hold {sum(seen.values())}", repair, "shard",
                                remove=shards / "index.json"))
    return problems, checks
