"""Source scanners: list every candidate image of a source as a row, without decoding anything.

Sources: `folder` (recursive), `celebamask-hq` (images + per-class mask PNGs + official split),
`ffhq` (images1024x1024 + per-image license metadata), `webdataset` (existing tars) and `parquet`
(an image-bytes column, e.g. a Hugging Face export). Each row gets a stable, filesystem-safe key
`<source name>/<id>` and `_src`, the identity of its bytes (size, mtime, member), so a changed file is
picked up again by the next run. Files that are not images are listed in `ingest/ignored.txt`, never
silently skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.images import EXTENSIONS, OTHER_IMAGE_EXTENSIONS

SCAN_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("kind", pa.string()), ("path", pa.string()),
    ("member", pa.string()), ("offset", pa.int64()), ("size", pa.int64()), ("_src", pa.string()),
    ("split_hint", pa.string()), ("license", pa.string()), ("source_url", pa.string()),
    ("gt_masks", pa.string()), ("preset_error", pa.string()),
])
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
SOURCE_TYPES = ("folder", "celebamask-hq", "ffhq", "webdataset", "parquet")
DEFAULT_NAMES = {"celebamask-hq": "celebahq", "ffhq": "ffhq", "webdataset": "wds", "parquet": "parquet"}
CELEBA_ANNO_DIRS = ("CelebAMask-HQ-mask-anno", "CelebAMaskHQ-mask-anno")
CELEBA_IMG_DIR = "CelebA-HQ-img"
FFHQ_JSON = "ffhq-dataset-v2.json"
FFHQ_SPLITS = {"training": "train", "validation": "val"}


@dataclass
class Scan:
    """What a scan found: candidate rows and the files it set aside (path, why)."""

    rows: list[dict[str, Any]]
    ignored: list[tuple[str, str]]


def safe_part(text: str, limit: int = 80) -> str:
    """One key component: `[A-Za-z0-9._-]` only, no leading dots; a hash suffix keeps changed names unique."""
    clean = _UNSAFE.sub("_", text).lstrip(".") or "_"
    if clean != text or len(clean) > limit:
        clean = f"{clean[:limit]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return clean


_KNOWN_EXT = frozenset(EXTENSIONS + OTHER_IMAGE_EXTENSIONS)


def make_key(source: str, rel: PurePosixPath | str) -> str:
    """`<source>/<dirs>/<stem>` from a relative path (either separator), every component made safe."""
    parts = [p for p in str(rel).replace(os.sep, "/").split("/") if p not in ("", ".")]
    stem, ext = os.path.splitext(parts[-1])
    if ext.lower() in _KNOWN_EXT:
        parts[-1] = stem
    return "/".join([source, *(safe_part(p) for p in parts)])


def detect_type(path: Path) -> str:
    """Guess a source's type from its layout."""
    if path.is_file():
        if path.suffix == ".tar":
            return "webdataset"
        if path.suffix == ".parquet":
            return "parquet"
        raise ValueError(f"{path}: a source file must be a .tar (webdataset) or .parquet")
    if (path / CELEBA_IMG_DIR).is_dir():
        return "celebamask-hq"
    if (path / "images1024x1024").is_dir() or (path / FFHQ_JSON).is_file():
        return "ffhq"
    names = [n for n in os.listdir(path) if not n.startswith(".")]
    if names and all(n.endswith(".tar") for n in names):
        return "webdataset"
    if names and all(n.endswith(".parquet") for n in names):
        return "parquet"
    return "folder"


def _row(key: str, source: str, kind: str, path: str, size: int, src: str, **extra: Any) -> dict[str, Any]:
    row = {f.name: None for f in SCAN_SCHEMA}
    row.update(key=key, source=source, kind=kind, path=path, member="", offset=0, size=size, _src=src)
    row.update(extra)
    return row


def _stat_id(path: str) -> tuple[int, str]:
    try:
        st = os.stat(path)
        return st.st_size, f"{st.st_size}:{st.st_mtime_ns}"
    except OSError as e:  # a broken symlink still becomes a row; reading it reports the reason
        return 0, f"missing:{e.errno}"


def walk_files(root: Path) -> Iterator[tuple[str, str]]:
    """(path, path relative to root) for every file below root; each real folder is entered once,
    so symlink loops end; broken symlinks are yielded too (they become `unreadable` rows)."""
    seen: set[tuple[int, int]] = set()
    queue = [(str(root), "")]
    while queue:
        d, rel = queue.pop(0)
        try:
            st = os.stat(d)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            sub = f"{rel}{e.name}"
            try:
                if e.is_dir(follow_symlinks=True):
                    queue.append((e.path, sub + "/"))
                    continue
            except OSError:
                pass
            yield e.path, sub


def _classify(rel: str) -> str | None:
    """'image', 'other-image' (unsupported format) or None (not an image file at all)."""
    name = os.path.basename(rel)
    if name.startswith("."):
        return None
    ext = os.path.splitext(name)[1].lower()
    if ext in EXTENSIONS:
        return "image"
    if ext in OTHER_IMAGE_EXTENSIONS:
        return "other-image"
    return None


def _preset(kind: str, rel: str) -> str | None:
    if kind != "other-image":
        return None
    return (f"unsupported_format:{os.path.splitext(rel)[1].lower()} files are not ingested "
            f"(supported: {', '.join(e.lstrip('.') for e in EXTENSIONS)})")


def _dedupe_keys(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`a.jpg` and `a.png` in one folder would share a key: give colliding keys their extension."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["key"]].append(r)
    for key, group in groups.items():
        if len(group) > 1:
            for r in group:
                ext = os.path.splitext(r["member"] or r["path"])[1].lstrip(".").lower() or "noext"
                r["key"] = f"{key}_{ext}"
    return sorted(rows, key=lambda r: r["key"])


def scan_folder(root: Path, source: str) -> Scan:
    rows, ignored = [], []
    for path, rel in walk_files(root):
        kind = _classify(rel)
        if kind is None:
            ignored.append((path, "not an image file"))
            continue
        size, src = _stat_id(path)
        rows.append(_row(make_key(source, rel), source, "file", path, size,
                         f"{src}:{path}", preset_error=_preset(kind, rel)))
    return Scan(_dedupe_keys(rows), ignored)


def _celeba_split(root: Path) -> dict[int, str]:
    """CelebA-HQ index -> split from the official files, when both are present."""
    mapping, partition = root / "CelebA-HQ-to-CelebA-mapping.txt", None
    for name in ("list_eval_partition.txt", "list_eval_partition.csv"):
        if (root / name).is_file():
            partition = root / name
    if not mapping.is_file() or partition is None:
        return {}
    part_of: dict[str, str] = {}
    for line in partition.read_text().splitlines():
        fields = [f for f in re.split(r"[,\s]+", line.strip()) if f]
        if len(fields) == 2 and fields[1] in ("0", "1", "2"):
            part_of[fields[0]] = ("train", "val", "test")[int(fields[1])]
    out: dict[int, str] = {}
    for line in mapping.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3 and fields[0].isdigit() and fields[2] in part_of:
            out[int(fields[0])] = part_of[fields[2]]
    return out


def scan_celebamask(root: Path, source: str) -> Scan:
    img_dir = root / CELEBA_IMG_DIR
    anno = next((root / d for d in CELEBA_ANNO_DIRS if (root / d).is_dir()), None)
    masks: dict[int, dict[str, str]] = defaultdict(dict)
    if anno is not None:
        for path, rel in walk_files(anno):
            m = re.match(r"^(\d+)_([a-z_]+)\.png$", os.path.basename(rel))
            if m:
                masks[int(m.group(1))][m.group(2)] = path
    split = _celeba_split(root)
    rows, ignored = [], []
    for path, rel in walk_files(img_dir):
        kind = _classify(rel)
        stem = Path(rel).stem
        if kind is None or not stem.isdigit():
            ignored.append((path, "not a CelebA-HQ image (<index>.jpg)"))
            continue
        idx = int(stem)
        size, src = _stat_id(path)
        mask_files = sorted(masks.get(idx, {}).items())
        mask_id = ";".join(_stat_id(p)[1] for _, p in mask_files)
        rows.append(_row(make_key(source, stem), source, "file", path, size, f"{src}:{path}|{mask_id}",
                         split_hint=split.get(idx), gt_masks=json.dumps(mask_files) if mask_files else None,
                         preset_error=_preset(kind, rel)))
    return Scan(_dedupe_keys(rows), ignored)


def scan_ffhq(root: Path, source: str) -> Scan:
    meta: dict[str, dict[str, Any]] = {}
    if (root / FFHQ_JSON).is_file():
        for entry in json.loads((root / FFHQ_JSON).read_text()).values():
            fp = entry.get("image", {}).get("file_path")
            if fp:
                meta[PurePosixPath(fp).stem] = entry
    img_root = root / "images1024x1024" if (root / "images1024x1024").is_dir() else root
    rows, ignored = [], []
    for path, rel in walk_files(img_root):
        kind = _classify(rel)
        if kind is None:
            ignored.append((path, "not an image file"))
            continue
        stem = Path(rel).stem
        size, src = _stat_id(path)
        entry = meta.get(stem, {})
        md = entry.get("metaData", {})
        lic = md.get("license")
        rows.append(_row(make_key(source, stem), source, "file", path, size, f"{src}:{path}",
                         split_hint=FFHQ_SPLITS.get(entry.get("category", "")),
                         license=lic, source_url=md.get("photo_url"), preset_error=_preset(kind, rel)))
    return Scan(_dedupe_keys(rows), ignored)


def _files_with(root: Path, suffix: str) -> list[Path]:
    return [root] if root.is_file() else sorted(p for p in root.rglob(f"*{suffix}") if p.is_file())


def scan_webdataset(root: Path, source: str) -> Scan:
    rows, ignored = [], []
    for tar_path in _files_with(root, ".tar"):
        stem = tar_path.stem
        size, tar_id = _stat_id(str(tar_path))
        samples: dict[str, list[tarfile.TarInfo]] = defaultdict(list)
        error = None
        try:
            with tarfile.open(tar_path) as tf:
                for m in tf:
                    if m.isfile():
                        base = PurePosixPath(m.name)
                        samples[str(base.parent / base.name.split(".", 1)[0])].append(m)
        except (tarfile.TarError, OSError, EOFError) as e:
            error = f"{type(e).__name__}: {e}"
        for sample, members in sorted(samples.items()):
            image = next((m for m in members if "." + m.name.rsplit(".", 1)[-1].lower() in EXTENSIONS), None)
            key = make_key(source, f"{stem}/{sample}")
            if image is None:
                exts = ", ".join(sorted("." + m.name.split(".", 1)[-1] for m in members))
                rows.append(_row(key, source, "tar", str(tar_path), 0, f"{tar_id}:{sample}",
                                 preset_error=f"unsupported_format:sample has no image member (has {exts})"))
                continue
            rows.append(_row(key, source, "tar", str(tar_path), image.size, f"{tar_id}:{image.name}",
                             member=image.name, offset=image.offset_data))
        if error:  # the tar itself is broken after the members listed: record it, keep what was read
            rows.append(_row(make_key(source, f"{stem}/__tar__"), source, "tar", str(tar_path), size,
                             f"{tar_id}:__tar__",
                             preset_error=f"decode_error:tar is corrupt or cut short after the samples listed ({error})"))
    return Scan(_dedupe_keys(rows), ignored)


def image_column(schema: pa.Schema, wanted: str | None) -> str:
    """The column that holds encoded images: binary, or a struct with a `bytes` field (HF `Image`)."""
    if wanted:
        if wanted not in schema.names:
            raise ValueError(f"image_column {wanted!r} is not in the parquet columns: {', '.join(schema.names)}")
        return wanted
    for f in schema:
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            return f.name
        if pa.types.is_struct(f.type) and f.type.get_field_index("bytes") >= 0:
            return f.name
    raise ValueError(f"no image column (binary, or struct with 'bytes') among: {', '.join(schema.names)}; "
                     "set image_column")


def scan_parquet(root: Path, source: str, wanted: str | None, id_column: str | None) -> Scan:
    rows = []
    for path in _files_with(root, ".parquet"):
        _, file_id = _stat_id(str(path))
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:  # one broken file is a row, not the end of the run
            rows.append(_row(make_key(source, f"{path.stem}/__parquet__"), source, "parquet", str(path), 0,
                             f"{file_id}:__parquet__", preset_error=f"decode_error:not a readable parquet file ({e})"))
            continue
        col = image_column(pf.schema_arrow, wanted)
        ids = (pf.read(columns=[id_column])[id_column].to_pylist() if id_column
               else [f"{i:08d}" for i in range(pf.metadata.num_rows)])
        for i, ident in enumerate(ids):
            rows.append(_row(make_key(source, f"{path.stem}/{ident}"), source, "parquet", str(path), 0,
                             f"{file_id}:{i}", member=f"{col}:{i}"))
    return Scan(_dedupe_keys(rows), [])


def read_bytes(row: dict[str, Any], cache: dict[str, Any] | None = None) -> bytes:
    """The encoded image of a scan row, from a file, a tar member or a parquet cell."""
    kind, path = row["kind"], row["path"]
    if kind == "file":
        with open(path, "rb") as f:
            return f.read()
    if kind == "tar":
        with open(path, "rb") as f:
            f.seek(int(row["offset"]))
            data = f.read(int(row["size"]))
        if len(data) != int(row["size"]):
            raise EOFError(f"tar member {row['member']} is cut short ({len(data)} of {row['size']} bytes)")
        return data
    if kind == "parquet":
        col, idx = row["member"].rsplit(":", 1)
        return _parquet_cell(path, col, int(idx), cache if cache is not None else {})
    raise ValueError(f"unknown source kind {kind!r}")


def _parquet_cell(path: str, col: str, idx: int, cache: dict[str, Any]) -> bytes:
    # Cache the last row group read: rows of one batch are neighbours, so each group is read once.
    pf = cache.get(path) or cache.setdefault(path, pq.ParquetFile(path))
    start = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if idx < start + n:
            ck = (path, col, g)
            if cache.get("_group_key") != ck:
                cache["_group"] = pf.read_row_group(g, columns=[col])[col]
                cache["_group_key"] = ck
            value = cache["_group"][idx - start].as_py()
            if isinstance(value, dict):
                value = value.get("bytes")
            if not value:
                raise ValueError(f"row {idx} has no image bytes in column {col!r}")
            return bytes(value)
        start += n
    raise IndexError(f"row {idx} is past the end of {path}")
