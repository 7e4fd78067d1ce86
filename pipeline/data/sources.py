"""Source scanners: list every candidate image of a source as a row, without decoding anything.

Sources: `folder` (recursive), `celebamask-hq` (images + per-class mask PNGs + official split),
`ffhq` (images1024x1024 + per-image license metadata), `webdataset` (existing tars) and `parquet`
(an image-bytes column, e.g. a Hugging Face export). Each row gets a stable, filesystem-safe key
`<source name>/<id>` and `_src`, the identity of its bytes (size, mtime, member), so a changed file is
picked up again by the next run. Files that are not images are listed in `ingest/ignored.tsv`, never
silently skipped; so are symlinks that lead outside the source root (not followed unless
`follow_external_symlinks`) and tar members that are not regular files (never followed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tarfile
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.data.images import EXTENSIONS, OTHER_IMAGE_EXTENSIONS

SCAN_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("kind", pa.string()), ("path", pa.string()),
    ("member", pa.string()), ("offset", pa.int64()), ("size", pa.int64()), ("_src", pa.string()),
    ("split_hint", pa.string()), ("license", pa.string()), ("source_url", pa.string()),
    ("gt_masks", pa.string()), ("preset_error", pa.string()),
])
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_CLEAN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")  # what safe_part returns unchanged (within the limit)
SOURCE_TYPES = ("folder", "celebamask-hq", "ffhq", "webdataset", "parquet")
DEFAULT_NAMES = {"celebamask-hq": "celebahq", "ffhq": "ffhq", "webdataset": "wds", "parquet": "parquet"}
CELEBA_ANNO_DIRS = ("CelebAMask-HQ-mask-anno", "CelebAMaskHQ-mask-anno")
CELEBA_IMG_DIR = "CelebA-HQ-img"
FFHQ_JSON = "ffhq-dataset-v2.json"
FFHQ_SPLITS = {"training": "train", "validation": "val"}


@dataclass
class Scan:
    """What a scan found: candidate rows (`SCAN_SCHEMA`, sorted by key within a source) and the files
    it set aside (path, why)."""

    table: pa.Table
    ignored: list[tuple[str, str]]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts (for small scans and tests; a run uses `table`)."""
        return self.table.to_pylist()


class RowBuffer:
    """Scan rows made Arrow every `chunk` rows: a scan of ten million images holds one chunk of row
    dicts at a time, the rest as columns (about 0.3 kB an image instead of 1.7 kB)."""

    def __init__(self, chunk: int = 1 << 13):
        self.chunk, self.pending, self.tables = chunk, [], []

    def append(self, row: dict[str, Any]) -> None:
        self.pending.append(row)
        if len(self.pending) >= self.chunk:
            self.tables.append(pa.Table.from_pylist(self.pending, schema=SCAN_SCHEMA))
            self.pending = []

    def table(self) -> pa.Table:
        if self.pending:
            self.tables.append(pa.Table.from_pylist(self.pending, schema=SCAN_SCHEMA))
            self.pending = []
        return pa.concat_tables(self.tables) if self.tables else SCAN_SCHEMA.empty_table()


def safe_part(text: str, limit: int = 80) -> str:
    """One key component: `[A-Za-z0-9._-]` only, no leading dots; a hash suffix keeps changed names unique."""
    if len(text) <= limit and _CLEAN.fullmatch(text):  # the common case, exactly what the lines below return
        return text
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
    return "/".join([source, *map(safe_part, parts)])


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
    tars = parquets = True  # every name not starting with a dot ends so (and there is one)
    names = False
    with os.scandir(path) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            names = True
            tars, parquets = tars and e.name.endswith(".tar"), parquets and e.name.endswith(".parquet")
            if not (tars or parquets):  # a folder of images: no need to list the rest
                break
    if names and tars:
        return "webdataset"
    if names and parquets:
        return "parquet"
    return "folder"


_EMPTY_ROW = dict.fromkeys(SCAN_SCHEMA.names)  # every column, in schema order, None


def _row(key: str, source: str, kind: str, path: str, size: int, src: str, **extra: Any) -> dict[str, Any]:
    row = _EMPTY_ROW.copy()
    row.update(key=key, source=source, kind=kind, path=path, member="", offset=0, size=size, _src=src)
    row.update(extra)
    return row


def _stat_id(path: str, st: os.stat_result | None = None) -> tuple[int, str]:
    """(size, identity) of a file; `st`, when given, is its `os.stat` already taken (by the walk)."""
    if st is None:
        try:
            st = os.stat(path)
        except OSError as e:  # a broken symlink still becomes a row; reading it reports the reason
            return 0, f"missing:{e.errno}"
    return st.st_size, f"{st.st_size}:{st.st_mtime_ns}"


def _within(target: str, boundary: str) -> bool:
    return target == boundary or os.path.commonpath([target, boundary]) == boundary


def outside_link(path: str | Path, boundary: str, follow_external_symlinks: bool = False) -> str | None:
    """Why `path` is not read, when a symlink takes it outside `boundary` (a resolved folder); else None.

    Resolving the whole path catches chains of links and links inside linked folders alike."""
    if follow_external_symlinks:
        return None
    target = os.path.realpath(path)
    if _within(target, boundary):
        return None
    return f"symlink to {target} outside the source root; set follow_external_symlinks: true to read it"


def walk_files(root: Path, ignored: list[tuple[str, str]] | None = None, *, boundary: Path | None = None,
               follow_external_symlinks: bool = False) -> Iterator[tuple[str, str]]:
    """(path, path relative to root) for every file below root; each real folder is entered once,
    so symlink loops end; broken symlinks are yielded too (they become `unreadable` rows).

    A symlink that resolves outside `boundary` (default: root) is not followed, so a link to /etc
    cannot put a system file into the index; it goes to `ignored` with the reason, as does a folder
    that cannot be listed."""
    for path, rel, _st in _walk(root, ignored, boundary=boundary, follow_external_symlinks=follow_external_symlinks):
        yield path, rel


_BY_NAME = attrgetter("name")


def _walk(root: Path, ignored: list[tuple[str, str]] | None = None, *, boundary: Path | None = None,
          follow_external_symlinks: bool = False) -> Iterator[tuple[str, str, os.stat_result | None]]:
    """`walk_files` plus each file's `os.stat` as the walk took it (None where that failed), so a scan
    does not stat every file a second time."""
    ignored = [] if ignored is None else ignored
    fence = os.path.realpath(boundary if boundary is not None else root)
    why = outside_link(root, fence, follow_external_symlinks)
    if why:
        ignored.append((str(root), why))
        return
    seen: set[tuple[int, int]] = set()
    queue = deque([(str(root), "")])
    while queue:
        d, rel = queue.popleft()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                entries = sorted(it, key=_BY_NAME)
        except OSError as e:
            ignored.append((d, f"cannot list this folder ({e.strerror or e}); its files are not read"))
            continue
        for e in entries:
            sub = f"{rel}{e.name}"
            fst = None
            try:
                why = outside_link(e.path, fence, follow_external_symlinks) if e.is_symlink() else None
                if why:
                    ignored.append((e.path, why))
                    continue
                if e.is_dir(follow_symlinks=True):
                    queue.append((e.path, sub + "/"))
                    continue
                fst = e.stat(follow_symlinks=True)  # os.stat(e.path), cached by the entry
                kind = _special(fst.st_mode)
                if kind:  # reading a fifo named photo.jpg would block the run forever
                    ignored.append((e.path, f"not a regular file ({kind}); not read"))
                    continue
            except OSError:
                pass
            yield e.path, sub, fst


def _special(mode: int) -> str | None:
    """What a non-regular file is (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in ((stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


_KIND = {**dict.fromkeys(OTHER_IMAGE_EXTENSIONS, "other-image"), **dict.fromkeys(EXTENSIONS, "image")}


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


def _sorted(t: pa.Table) -> pa.Table:
    """`t` sorted by key (a stable sort; skipped when the walk already yielded key order)."""
    keys = t["key"]
    if len(keys) > 1 and not pc.all(pc.greater_equal(keys[1:], keys[:-1])).as_py():
        return t.take(pc.sort_indices(keys))
    return t


def _dedupe_keys(rows: RowBuffer) -> pa.Table:
    """`a.jpg` and `a.png` in one folder would share a key: give colliding keys their extension. Returns
    the rows sorted by key (a stable sort), as Arrow; only colliding rows become Python objects."""
    t = _sorted(rows.table())
    if t.num_rows < 2:
        return t
    keys = t["key"]
    same = pc.equal(keys[1:], keys[:-1])  # sorted: a shared key is a run of neighbours
    if not pc.any(same).as_py():
        return t
    for suffix in (_ext_suffix, _path_suffix):  # `a.jpg` + `a_jpg.jpg` collide again: then a path hash
        same = pa.concat_arrays(same.chunks) if isinstance(same, pa.ChunkedArray) else same
        no = pa.array([False])
        mask = pc.or_(pa.concat_arrays([same, no]), pa.concat_arrays([no, same]))
        new = [f"{r['key']}_{suffix(r)}" for r in t.filter(mask).select(["key", "member", "path"]).to_pylist()]
        t = _sorted(t.set_column(0, "key", pc.replace_with_mask(t["key"].combine_chunks(), mask,
                                                               pa.array(new, pa.string()))))
        same = pc.equal(t["key"][1:], t["key"][:-1])
        if not pc.any(same).as_py():
            break
    return t


def _ext_suffix(r: dict[str, Any]) -> str:
    return os.path.splitext(r["member"] or r["path"])[1].lstrip(".").lower() or "noext"


def _path_suffix(r: dict[str, Any]) -> str:
    return hashlib.sha1(f"{r['path']}\0{r['member'] or ''}".encode(errors="surrogateescape")).hexdigest()[:8]


def scan_folder(root: Path, source: str, *, follow_external_symlinks: bool = False) -> Scan:
    rows, ignored = RowBuffer(), []
    folder, prefix = None, ""  # the key prefix of the folder being listed (the walk lists one at a time)
    for path, rel, st in _walk(root, ignored, follow_external_symlinks=follow_external_symlinks):
        # `_classify(rel)` and `make_key(source, rel)`, sharing the work: rel is "<folders>/<name>"
        name = rel[rel.rfind("/") + 1:]
        dot = name.rfind(".")
        ext = name[dot:].lower() if dot > 0 else ""  # os.path.splitext for a name without a leading dot
        kind = None if name.startswith(".") else _KIND.get(ext)
        if kind is None:
            ignored.append((path, "not an image file"))
            continue
        if rel[:len(rel) - len(name)] != folder:
            folder = rel[:len(rel) - len(name)]
            prefix = "/".join([source, *map(safe_part, [p for p in folder.split("/") if p not in ("", ".")])])
        size, src = _stat_id(path, st)
        rows.append(_row(f"{prefix}/{safe_part(name[:dot])}", source, "file", path, size,
                         f"{src}:{path}", preset_error=_preset(kind, rel)))
    return Scan(_dedupe_keys(rows), ignored)


def _metadata_file(path: Path, fence: str, follow: bool, ignored: list[tuple[str, str]]) -> bool:
    """True when a source's metadata file exists and may be read (not a link outside the root)."""
    if not path.is_file():
        return False
    why = outside_link(path, fence, follow)
    if why:
        ignored.append((str(path), why))
    return why is None


def _celeba_split(root: Path, follow: bool, ignored: list[tuple[str, str]]) -> dict[int, str]:
    """CelebA-HQ index -> split from the official files, when both are present."""
    fence = os.path.realpath(root)
    mapping, partition = root / "CelebA-HQ-to-CelebA-mapping.txt", None
    for name in ("list_eval_partition.txt", "list_eval_partition.csv"):
        if (root / name).is_file():
            partition = root / name
    if not _metadata_file(mapping, fence, follow, ignored) or partition is None \
            or not _metadata_file(partition, fence, follow, ignored):
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


def scan_celebamask(root: Path, source: str, *, follow_external_symlinks: bool = False) -> Scan:
    img_dir = root / CELEBA_IMG_DIR
    anno = next((root / d for d in CELEBA_ANNO_DIRS if (root / d).is_dir()), None)
    masks: dict[int, dict[str, str]] = defaultdict(dict)
    rows = RowBuffer()
    ignored: list[tuple[str, str]] = []
    walk = {"boundary": root, "follow_external_symlinks": follow_external_symlinks}
    if anno is not None:
        for path, rel in walk_files(anno, ignored, **walk):
            m = re.match(r"^(\d+)_([a-z_]+)\.png$", os.path.basename(rel))
            if m:
                masks[int(m.group(1))][m.group(2)] = path
    split = _celeba_split(root, follow_external_symlinks, ignored)
    for path, rel in walk_files(img_dir, ignored, **walk):
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


def scan_ffhq(root: Path, source: str, *, follow_external_symlinks: bool = False) -> Scan:
    meta: dict[str, dict[str, Any]] = {}
    rows = RowBuffer()
    ignored: list[tuple[str, str]] = []
    if _metadata_file(root / FFHQ_JSON, os.path.realpath(root), follow_external_symlinks, ignored):
        for entry in json.loads((root / FFHQ_JSON).read_text()).values():
            fp = entry.get("image", {}).get("file_path")
            if fp:
                meta[PurePosixPath(fp).stem] = entry
    img_root = root / "images1024x1024" if (root / "images1024x1024").is_dir() else root
    for path, rel in walk_files(img_root, ignored, boundary=root, follow_external_symlinks=follow_external_symlinks):
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


def _files_with(root: Path, suffix: str, ignored: list[tuple[str, str]], follow: bool) -> list[Path]:
    """The source file itself, or every `*suffix` file below the folder; other files go to `ignored`."""
    if root.is_file():
        return [root]
    found = []
    for path, _rel in walk_files(root, ignored, follow_external_symlinks=follow):
        if not path.endswith(suffix):
            ignored.append((path, f"not a {suffix} file"))
        elif os.path.isfile(path):
            found.append(Path(path))
        else:
            ignored.append((path, "not a readable file (a broken symlink?); not read"))
    return sorted(found)


def _not_regular(m: tarfile.TarInfo) -> str | None:
    """Why a tar member is not read (links are never followed), or None for a regular file."""
    if m.issparse():  # its bytes are not stored in one run, so reading them at offset_data is wrong
        what = "a sparse file"
    elif m.isfile():
        return None
    elif m.issym():
        what = f"a symlink (to {m.linkname})"
    elif m.islnk():
        what = f"a hardlink (to {m.linkname})"
    elif m.ischr() or m.isblk():
        what = "a device"
    elif m.isfifo():
        what = "a fifo"
    else:
        what = f"of tar type {m.type!r}"
    return f"tar member is {what}, not a regular file; not read"


def scan_webdataset(root: Path, source: str, *, follow_external_symlinks: bool = False) -> Scan:
    rows = RowBuffer()
    ignored: list[tuple[str, str]] = []
    for tar_path in _files_with(root, ".tar", ignored, follow_external_symlinks):
        stem = tar_path.stem
        size, tar_id = _stat_id(str(tar_path))
        samples: dict[str, list[tarfile.TarInfo]] = defaultdict(list)
        error = None
        try:
            with tarfile.open(tar_path) as tf:
                for m in tf:
                    if m.isdir():
                        continue
                    why = _not_regular(m)
                    if why:
                        ignored.append((f"{tar_path}#{m.name}", why))
                        continue
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


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _holds_images(t: pa.DataType) -> bool:
    if _is_binary(t):
        return True
    i = t.get_field_index("bytes") if pa.types.is_struct(t) else -1
    return i >= 0 and _is_binary(t.field(i).type)


def image_column(schema: pa.Schema, wanted: str | None) -> str:
    """The column that holds encoded images: binary, or a struct with a binary `bytes` field (HF `Image`).

    A named column is type-checked here: reading an integer cell as bytes would allocate that many
    zero bytes, so a tiny file could exhaust memory."""
    if wanted:
        if wanted not in schema.names:
            raise ValueError(f"image_column {wanted!r} is not in the parquet columns: {', '.join(schema.names)}")
        t = schema.field(wanted).type
        if not _holds_images(t):
            shown = str(t) if len(str(t)) <= 80 else str(t)[:77] + "..."
            raise ValueError(f"image_column {wanted!r} has type {shown}; expected binary, large_binary "
                             "or a struct with a binary 'bytes' field")
        return wanted
    for f in schema:
        if _holds_images(f.type):
            return f.name
    raise ValueError(f"no image column (binary, or struct with 'bytes') among: {', '.join(schema.names)}; "
                     "set image_column")


def scan_parquet(root: Path, source: str, wanted: str | None, id_column: str | None, *,
                 follow_external_symlinks: bool = False) -> Scan:
    rows = RowBuffer()
    ignored: list[tuple[str, str]] = []
    for path in _files_with(root, ".parquet", ignored, follow_external_symlinks):
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
    return Scan(_dedupe_keys(rows), ignored)


def read_bytes(row: dict[str, Any], cache: dict[str, Any] | None = None) -> bytes:
    """The encoded image of a scan row, from a file, a tar member or a parquet cell."""
    kind, path = row["kind"], row["path"]
    if kind == "file":
        with open(path, "rb", buffering=0) as f:  # one read of the whole file, no buffer object in between
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
            if not isinstance(value, bytes):  # never bytes(int): that allocates int zero bytes
                raise ValueError(f"row {idx} of column {col!r} holds {type(value).__name__}, not image bytes")
            return value
        start += n
    raise IndexError(f"row {idx} is past the end of {path}")
