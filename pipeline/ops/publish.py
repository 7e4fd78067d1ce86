"""`facecurate publish OUT DIR`: a folder holding exactly what a Hugging Face dataset repository needs.

`OUT/shards/` also holds the shard ledger, `.assembly.json`, `.finalized.json` and the staged fragments
(`.samples/`), so uploading it uploads all of that. `publish` writes DIR with the shard tars (hard links
when DIR is on the run's filesystem, else copies), `README.md` (the dataset card), `features.json` and
`index.json`, and nothing else; `hf upload <user>/<name> DIR --repo-type dataset` then pushes it.

Every shard is hashed against its sha256 in `index.json` as it is copied (a hard link: before it is
made), and the card and features against `index["files"]`, so a damaged run is never published. Each
file appears under its final name whole (temporary name, then rename); the card comes first and
`index.json` last, so a DIR with the run's `index.json` is a complete publish. A second publish of the
same run writes nothing; shards the index no longer names are removed.

DIR must be absent, empty, or a previous publish of the same dataset: nothing in it but those files
(and huggingface_hub's `.cache/`, which uploads skip), with a card of the same `pretty_name`. Anything
else is refused, so publishing never deletes or overwrites files it did not write.

A hard-linked shard is the run's own file: editing it in DIR would edit the run. The shard stage never
writes a shard in place (it writes a new file and renames it), so re-sharding leaves DIR as it was until
the next publish.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.config import ConfigError
from pipeline.core.files import update_bytes
from pipeline.core.ledger import sha256_file
from pipeline.core.run import locked
from pipeline.ops.findings import card_front_matter

CARD, FEATURES, INDEX = "README.md", "features.json", "index.json"
_SHARD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*-\d{6}\.tar")
_TEMP = re.compile(r"\..+\.(publish|tmp)-\d+")  # left by a killed publish (ours, or atomic_write's)
_CHUNK = 8 << 20


@dataclass
class PublishResult:
    """What a publish wrote (for the summary).

    Args:
        dest: the published folder.
        repo_name: a Hub repository name made from the manifest name.
        pretty_name: the card's `pretty_name`.
        index: the run's `index.json`.
        linked, copied, unchanged: shard files hard-linked, copied, or already in place.
        removed: files of an earlier publish that the index no longer names.
        rewritten: of README.md, features.json and index.json, those whose bytes changed.
    """

    dest: Path
    repo_name: str
    pretty_name: str
    index: dict[str, Any]
    linked: int = 0
    copied: int = 0
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)
    rewritten: list[str] = field(default_factory=list)


def repo_name(out: Path) -> str:
    """`<name>` of the suggested `<user>/<name>`: the manifest name with only the characters the Hub allows."""
    path = out / "manifest.resolved.yaml"
    try:
        name = ((yaml.safe_load(path.read_text()) or {}).get("manifest") or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    slug = re.sub(r"[^a-z0-9._-]+", "-", str(name or out.resolve().name).lower()).strip("-.")
    return re.sub(r"[-.]{2,}", "-", slug)[:96] or "faces"


def publish(out: Path, dest: Path) -> PublishResult:
    """Write DIR (`dest`) from the shards of the run in `out` (module docstring), holding the run's lock so
    that no shard run rewrites a shard while it is hashed."""
    _read_index(out)  # before the lock: a folder that holds no run gets no .lock
    with locked(out):
        return _publish(out, dest)


def _publish(out: Path, dest: Path) -> PublishResult:
    shards = out / "shards"
    raw, index = _read_index(out)
    small = {n: _checked(shards / n, (index.get("files") or {}).get(n), out) for n in (CARD, FEATURES)}
    pretty = (card_front_matter(small[CARD].decode("utf-8", "replace")) or {}).get("pretty_name")
    names = [e["name"] for e in index["shards"]]
    _check_dest(out, dest, pretty, set(names))
    dest.mkdir(parents=True, exist_ok=True)
    for p in dest.iterdir():
        if _TEMP.fullmatch(p.name) and p.is_file():
            p.unlink()
    result = PublishResult(dest, repo_name(out), str(pretty), index)
    for n in (CARD, FEATURES):  # the card first: a partial publish is recognised by it
        if update_bytes(dest / n, small[n]):
            result.rewritten.append(n)
    for e in index["shards"]:
        how = _place(shards / e["name"], dest / e["name"], e, out)
        setattr(result, how, getattr(result, how) + 1)
    for p in sorted(dest.iterdir()):
        if p.is_file() and _SHARD.fullmatch(p.name) and p.name not in names:
            p.unlink()
            result.removed.append(p.name)
    if update_bytes(dest / INDEX, raw):  # last: the completion marker
        result.rewritten.append(INDEX)
    return result


def _read_index(out: Path) -> tuple[bytes, dict[str, Any]]:
    path = out / "shards" / INDEX
    if not path.is_file():
        raise ConfigError(f"{out} has no shards/index.json: run `facecurate shard {out}` first")
    raw = path.read_bytes()
    try:
        index = json.loads(raw)
        if not isinstance(index.get("shards"), list):
            raise ValueError("no shard list")
    except (ValueError, AttributeError) as e:
        raise ConfigError(f"{path} does not read ({e}): run `facecurate shard {out}` again") from None
    return raw, index


def _checked(path: Path, sha256: str | None, out: Path) -> bytes:
    """The bytes of the card or features, checked against the sha256 `index.json` records for them."""
    try:
        data = path.read_bytes()
    except OSError:
        raise ConfigError(f"{path} is missing: run `facecurate shard {out}` again") from None
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ConfigError(f"{path} changed after the shard stage wrote it (sha256 differs from index.json): "
                          f"run `facecurate shard {out}` again")
    return data


def _ours(p: Path, names: set[str]) -> bool:
    """Whether `p` is something a publish writes (or huggingface_hub's cache folder, which uploads skip)."""
    if p.name == ".cache" and p.is_dir() and not p.is_symlink():
        return all(c.name == "huggingface" for c in p.iterdir())
    return p.is_file() and not p.is_symlink() and (p.name in (CARD, FEATURES, INDEX) or p.name in names
                                                   or bool(_SHARD.fullmatch(p.name) or _TEMP.fullmatch(p.name)))


def _check_dest(out: Path, dest: Path, pretty: Any, names: set[str]) -> None:
    """Refuse a DIR that is not absent, empty, or a previous publish of the same dataset."""
    shards = (out / "shards").resolve()
    where = dest.resolve()
    if where == shards or shards in where.parents or where in shards.parents:
        raise ConfigError(f"{dest}: publish into a folder of its own, not {out}, its shards or a folder "
                          "inside the shards or above them")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise ConfigError(f"{dest} is not a folder")
    entries = sorted(dest.iterdir())
    foreign = [p.name for p in entries if not _ours(p, names)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"{dest} is not empty and not a publish of this run (it holds {shown}): "
                          "publish into a new or empty folder")
    published = [p for p in entries if not _TEMP.fullmatch(p.name) and p.name != ".cache"]
    if not published:
        return
    card = dest / CARD
    theirs = card_front_matter(card.read_text(errors="replace")) if card.is_file() else None
    if theirs is None or theirs.get("pretty_name") != pretty:
        what = f"the dataset {theirs.get('pretty_name')!r}" if theirs else "shards without this run's card"
        raise ConfigError(f"{dest} holds {what}, not a publish of {pretty!r}: publish into a new or empty folder")


def _place(src: Path, dst: Path, entry: dict[str, Any], out: Path) -> str:
    """Put one shard at `dst`, checked against `index.json`: `linked`, `copied` or `unchanged`."""
    bad = (f"{src} does not match index.json ({{}}): run `facecurate verify {out}`, then "
           f"`facecurate repair {out}`")
    try:
        st = src.stat()
    except OSError:
        raise ConfigError(f"{src} is missing: run `facecurate shard {out}` again") from None
    if st.st_size != entry["bytes"]:
        raise ConfigError(bad.format(f"{st.st_size} bytes, the index says {entry['bytes']}"))
    if dst.is_file():
        if os.path.samefile(src, dst):  # a hard link made by an earlier publish: the run's own file
            return "unchanged"
        if dst.stat().st_size == entry["bytes"] and sha256_file(dst) == entry["sha256"]:
            return "unchanged"
    tmp = dst.with_name(f".{dst.name}.publish-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
            how, digest = "linked", sha256_file(src)
        except OSError:  # another filesystem, or one without hard links
            how, digest = "copied", _copy(src, tmp)
        if digest != entry["sha256"]:
            raise ConfigError(bad.format("sha256 differs"))
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return how


def _copy(src: Path, tmp: Path) -> str:
    """Copy `src` to `tmp` (fsynced), returning the sha256 of the bytes written."""
    h = hashlib.sha256()
    with open(src, "rb") as r, open(tmp, "wb") as w:
        while chunk := r.read(_CHUNK):
            h.update(chunk)
            w.write(chunk)
        w.flush()
        os.fsync(w.fileno())
    return h.hexdigest()
