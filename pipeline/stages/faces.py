"""Faces: detect, take 68 landmarks, align the FFHQ way, filter, describe and group by identity.

Per photo (dlib's HOG detector, or its CNN one; real weights from `face_recognition_models`): every face
with a detection score and 68 landmarks, chosen by `multi_face` (`largest`, `all`: each face its own key
`<photo key>#face<i>`, or `reject`: a photo with several faces is a row `multiple_faces`), then aligned
with NVlabs' FFHQ procedure (`pipeline.models.dlib_faces.ffhq_align`) to `aligned/<face key>.png` at
`size` (1024). Sources already aligned (`aligned_sources`: ffhq, celebahq) keep their pixels; their face
is still found for the descriptor. Filters are rows with a reason, never silent drops: `no_face`,
`face_too_small` (detected box side under `min_face` px), `too_blurry` (variance of the Laplacian of
the 256 px grey crop under `min_sharpness`), `extreme_pose` (|yaw| from the landmarks over `max_yaw`),
`mostly_padding` (over `max_padding` of the crop outside the photo).

Identity (in finalize, over every kept face): dlib's 128-d descriptor; faces closer than
`identity_threshold` (0.6, dlib's own threshold for "the same person") are linked and each connected
group is one `identity` (`id-000001`, ...). Near-duplicates (the same photo re-saved, resized, grey,
mirrored or cropped a little) are a closer descriptor (`duplicate_threshold`, 0.35) and a perceptual
hash within `max_hash_distance` bits (of 64, mirror included): all but the first face key become
status `near_duplicate` with `near_duplicate_of`. `split_by: identity` puts every identity in one split
(the split most of its faces have; ties by name), so neither a person nor a near-duplicate straddles
train and val. Downstream stages read the aligned crops: `StageContext.index()` returns one row per kept
face (`pipeline.core.stage`). A report goes to `faces/report.json` and `faces/report.html`.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import StageConfig
from pipeline.core.ledger import OK, atomic_write_bytes
from pipeline.core.stage import Stage, StageContext
from pipeline.data.images import load_rgb

DROPPED = ("no_face", "face_too_small", "too_blurry", "extreme_pose", "mostly_padding", "multiple_faces")


@dataclass(frozen=True)
class FacesConfig(StageConfig):
    """Settings of the faces stage.

    Args:
        size: side of the aligned crop (FFHQ: 1024).
        multi_face: `largest`, `all` (each face its own key) or `reject`.
        detector: `hog` (dlib's frontal detector, CPU) or `cnn` (dlib's MMOD CNN; CUDA where dlib has it).
        upsample: detector upsampling steps (1 finds faces down to about 40 px).
        min_score: detections scoring under this are not faces (HOG: real faces score about 0.4-1.2 on
            the test portraits; the astronaut photo's false detection on her suit 0.12).
        detect_max_side: detection runs on a copy at most this big (landmarks are exact either way).
        min_face: smallest detected face box side kept, in photo pixels.
        min_sharpness: smallest variance of the Laplacian of the 256 px grey crop kept (the astronaut
            portrait: 124 sharp, 6.8 / 4.7 / 3.4 blurred with a Gaussian of radius 1.5 / 2 / 3 px at 512).
        max_yaw: largest |yaw| kept (0 frontal, about 1 in profile).
        max_padding: largest share of the crop outside the photo kept.
        aligned_sources: index `source` names whose images are already aligned crops.
        identity_threshold: descriptor distance under which two faces are the same person (dlib: 0.6).
        duplicate_threshold: descriptor distance under which, with a close hash, two faces are one photo.
        max_hash_distance: pHash bits (of 64) within which two crops look the same (mirror included).
        split_by: `source` (keep ingest's splits) or `identity` (each identity in one split).
        models_dir: a folder with dlib's .dat files (default: the face_recognition_models package).
    """

    size: int = 1024
    multi_face: Literal["largest", "all", "reject"] = "largest"
    detector: Literal["hog", "cnn"] = "hog"
    upsample: int = 1
    min_score: float = 0.3
    detect_max_side: int = 1024
    min_face: int = 64
    min_sharpness: float = 8.0
    max_yaw: float = 0.75
    max_padding: float = 0.5
    aligned_sources: tuple[str, ...] = ("celebahq", "ffhq")
    identity_threshold: float = 0.6
    duplicate_threshold: float = 0.35
    max_hash_distance: int = 12
    split_by: Literal["source", "identity"] = "source"
    models_dir: str | None = None

    def __post_init__(self) -> None:
        if not 64 <= self.size <= 4096:
            raise ValueError(f"size must be from 64 to 4096, got {self.size}")
        if not 0 < self.duplicate_threshold <= self.identity_threshold < 2:
            raise ValueError("duplicate_threshold must be above 0 and at most identity_threshold")


class FacesStage(Stage):
    """Rows per photo: one per kept face (or one with the reason nothing was kept)."""

    schema: ClassVar[pa.Schema] = pa.schema([
        ("face_key", pa.string()), ("face_index", pa.int32()), ("faces_found", pa.int32()),
        ("bbox", pa.list_(pa.int32())), ("landmarks", pa.list_(pa.float32())), ("score", pa.float64()),
        ("aligned", pa.string()), ("aligned_sha256", pa.string()), ("size", pa.int32()),
        ("sharpness", pa.float64()), ("yaw", pa.float64()), ("padding", pa.float64()),
        ("descriptor", pa.list_(pa.float32())), ("phash", pa.string()), ("identity", pa.string()),
        ("near_duplicate_of", pa.string()), ("split", pa.string()), ("photo_path", pa.string()),
    ])
    version: ClassVar[str] = "1"

    def __init__(self, cfg: FacesConfig, ctx: StageContext):
        super().__init__(cfg, ctx)
        from pipeline.models.dlib_faces import DlibFaces

        self.faces = DlibFaces(cfg.models_dir, cfg.detector, cfg.upsample)

    @classmethod
    def inputs(cls, cfg: FacesConfig, ctx: StageContext, requires: tuple[str, ...] = ()) -> pa.Table:
        index = ctx.index(faces=False)
        src = pc.cast(index["sha256"], pa.string())
        done = ctx.ledger("faces").read(["key", "status", "aligned", "aligned_sha256"])
        crops = done.filter(pc.and_(pc.equal(done["status"], OK),
                                    pc.fill_null(pc.not_equal(done["aligned_sha256"], ""), False)))
        lost = [k for lo in range(0, crops.num_rows, 1 << 16)  # a deleted crop makes its photo pending again
                for k, a in zip(*(crops[c].slice(lo, 1 << 16).to_pylist() for c in ("key", "aligned")), strict=True)
                if not (ctx.out / a).is_file()]
        if lost:
            gone = pc.is_in(index["key"], value_set=pa.array(lost, pa.string()))
            src = pc.if_else(gone, pc.binary_join_element_wise(src, "|crop-missing", ""), src)
        return index.append_column("_src", src)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows: list[dict[str, Any]] = []
        for key, path, source, split in zip(batch["key"], batch["path"], batch["source"], batch["split"], strict=True):
            rows += self._photo(str(key), str(path), str(source), str(split))
        return {c: [r.get(c) for r in rows] for c in ["key", "status", "error", *self.schema.names]}

    def _photo(self, key: str, path: str, source: str, split: str) -> list[dict[str, Any]]:
        from PIL import Image

        from pipeline.models.dlib_faces import (
            ffhq_align,
            grey_mirror_hashes,
            padding_share,
            sharpness,
            yaw,
        )

        cfg = self.cfg
        base = {"key": key, "status": OK, "error": "", "photo_path": path, "split": split}
        try:
            p = Path(path)
            img = load_rgb(p if p.is_absolute() else self.ctx.out / p)
        except Exception as e:  # noqa: BLE001 - a file that stopped decoding is a row
            return [{**base, "status": "decode_error", "error": f"{type(e).__name__}: {e}"[:300]}]
        rgb = np.asarray(img)
        faces = [f for f in self.faces.detect(rgb, cfg.detect_max_side) if f.score >= cfg.min_score]
        aligned_source = source in cfg.aligned_sources
        if not faces:
            if not aligned_source:
                return [{**base, "status": "no_face", "faces_found": 0, "error": "no face detected"}]
            faces = []
        faces.sort(key=lambda f: -(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]))
        if cfg.multi_face == "reject" and len(faces) > 1:
            return [{**base, "status": "multiple_faces", "faces_found": len(faces),
                     "error": f"{len(faces)} faces in the photo (multi_face: reject)"}]
        chosen = faces if cfg.multi_face == "all" else faces[:1]
        out = []
        for i, face in enumerate(chosen or [None]):
            face_key = key if (cfg.multi_face != "all" or len(chosen) <= 1) else f"{key}#face{i + 1}"
            row = {**base, "face_key": face_key, "face_index": i, "faces_found": len(faces)}
            if face is not None:
                side = min(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1])
                row.update(bbox=list(face.bbox), score=face.score,
                           landmarks=face.landmarks.astype(np.float32).ravel().tolist(), yaw=yaw(face.landmarks))
            if aligned_source:
                crop, pad = img, 0.0
                rel = path
            else:
                if side < cfg.min_face:
                    out.append({**row, "status": "face_too_small",
                                "error": f"face box {side} px, under min_face {cfg.min_face}"})
                    continue
                crop, quad = ffhq_align(img, face.landmarks, cfg.size, transform_size=min(4096, 2 * cfg.size))
                pad = padding_share(quad, *img.size)
                rel = f"aligned/{face_key}.png"
            row["padding"] = pad
            row["sharpness"] = sharpness(np.asarray(crop.convert("L")))
            reason = ""
            if row["sharpness"] < cfg.min_sharpness:
                reason = "too_blurry", f"sharpness {row['sharpness']:.1f} under min_sharpness {cfg.min_sharpness}"
            elif face is not None and abs(row["yaw"]) > cfg.max_yaw:
                reason = "extreme_pose", f"yaw {row['yaw']:+.2f} beyond max_yaw {cfg.max_yaw}"
            elif pad > cfg.max_padding:
                reason = "mostly_padding", f"{100 * pad:.0f}% of the crop is outside the photo"
            if reason:
                out.append({**row, "status": reason[0], "error": reason[1]})
                continue
            if not aligned_source:
                buf = io.BytesIO()
                crop.save(buf, "PNG")
                data = buf.getvalue()
                atomic_write_bytes(self.ctx.out / rel, data)
                row["aligned_sha256"] = hashlib.sha256(data).hexdigest()
            else:
                row["aligned_sha256"] = None  # the photo's own sha256 stands (see the index)
            row.update(aligned=rel, size=crop.size[0])
            if face is not None:
                row["descriptor"] = self.faces.descriptor(rgb, face.landmarks).tolist()
            h, m = grey_mirror_hashes(crop if isinstance(crop, Image.Image) else Image.fromarray(crop))
            row["phash"] = f"{h:016x}:{m:016x}"
            out.append(row)
        return out

    @classmethod
    def finalize(cls, cfg: FacesConfig, ctx: StageContext, inputs: pa.Table | None = None) -> None:
        ledger = ctx.ledger("faces")
        t = ledger.read()
        if not t.num_rows:
            return
        rows = t.to_pylist()
        changed = assign_identities(rows, cfg)
        if changed:
            ledger.write(pa.Table.from_pylist(rows, schema=t.schema))
        write_report(ctx.out, rows, cfg)


def assign_identities(rows: list[dict[str, Any]], cfg: FacesConfig) -> bool:
    """Identity, near-duplicates and (split_by identity) splits over every kept face; True if rows changed."""
    from pipeline.models.dlib_faces import hamming

    before = [(r["status"], r.get("identity"), r.get("near_duplicate_of"), r.get("split")) for r in rows]
    kept = [r for r in rows if r["status"] in (OK, "near_duplicate")]
    for r in kept:
        r["status"], r["near_duplicate_of"], r["error"] = OK, None, ""
    kept.sort(key=lambda r: r["face_key"])
    with_desc = [r for r in kept if r.get("descriptor")]
    parent = list(range(len(with_desc)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dup_of: dict[int, int] = {}
    if with_desc:
        d = np.asarray([r["descriptor"] for r in with_desc], np.float32)
        hashes = [tuple(int(h, 16) for h in (r.get("phash") or "0:0").split(":")) for r in with_desc]
        for start in range(0, len(d), 2048):  # blocks of rows against all later rows
            block = d[start:start + 2048]
            dist = np.sqrt(np.maximum(((block[:, None, :] - d[None, :, :]) ** 2).sum(-1), 0))
            for bi, j in zip(*np.nonzero(dist < cfg.identity_threshold), strict=True):
                i = start + bi
                if j <= i:
                    continue
                parent[find(j)] = find(i)
                if dist[bi, j] < cfg.duplicate_threshold and j not in dup_of:
                    (hi, mi), (hj, _) = hashes[i], hashes[j]
                    if min(hamming(hi, hj), hamming(mi, hj)) <= cfg.max_hash_distance:
                        dup_of[j] = dup_of.get(i, i)
    roots: dict[int, str] = {}
    for i, r in enumerate(with_desc):
        root = find(i)
        roots.setdefault(root, f"id-{len(roots) + 1:06d}")
        r["identity"] = roots[root]
    n = len(roots)
    for r in kept:
        if not r.get("descriptor"):
            n += 1
            r["identity"] = f"id-{n:06d}"
    for j, i in dup_of.items():
        with_desc[j]["status"] = "near_duplicate"
        with_desc[j]["near_duplicate_of"] = with_desc[i]["face_key"]
        with_desc[j]["error"] = f"a near-duplicate of {with_desc[i]['face_key']}, which is kept"
    if cfg.split_by == "identity":
        by_id: dict[str, Counter] = {}
        for r in kept:
            by_id.setdefault(r["identity"], Counter())[r["split"]] += 1
        choice = {i: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0] for i, c in by_id.items()}
        for r in kept:
            r["split"] = choice[r["identity"]]
    after = [(r["status"], r.get("identity"), r.get("near_duplicate_of"), r.get("split")) for r in rows]
    return before != after


def write_report(out: Path, rows: list[dict[str, Any]], cfg: FacesConfig) -> dict[str, Any]:
    """faces/report.json and faces/report.html: faces per photo, sizes, sharpness, pose, identities, drops."""
    from PIL import Image

    from pipeline.reports.html_kit import CSS, back_link, kv_table, thumb
    from pipeline.reports.index_page import write_index

    kept = [r for r in rows if r["status"] == OK]
    photos = Counter(r["key"] for r in rows)
    per_photo = Counter(r.get("faces_found") or 0 for r in {r["key"]: r for r in rows}.values())
    ids = Counter(r["identity"] for r in kept if r.get("identity"))
    report = {
        "photos": len(photos), "faces_kept": len(kept),
        # most common first, ties by name: ledger rows come in the order parallel workers finished
        "by_status": dict(sorted(Counter(r["status"] for r in rows).items(), key=lambda kv: (-kv[1], kv[0]))),
        "faces_found_per_photo": {str(k): v for k, v in sorted(per_photo.items())},
        "identities": len(ids), "faces_per_identity": {str(k): v for k, v in sorted(Counter(ids.values()).items())},
        "face_box_px": _quantiles([min(r["bbox"][2] - r["bbox"][0], r["bbox"][3] - r["bbox"][1])
                                   for r in kept if r.get("bbox")]),
        "sharpness": _quantiles([r["sharpness"] for r in kept if r.get("sharpness") is not None]),
        "yaw": _quantiles([r["yaw"] for r in kept if r.get("yaw") is not None]),
        "splits_per_identity_max": max((len({r["split"] for r in kept if r["identity"] == i}) for i in ids), default=0),
        "settings": {"multi_face": cfg.multi_face, "min_face": cfg.min_face, "min_sharpness": cfg.min_sharpness,
                     "max_yaw": cfg.max_yaw, "identity_threshold": cfg.identity_threshold, "split_by": cfg.split_by},
    }
    atomic_write_bytes(out / "faces" / "report.json", json.dumps(report, indent=2, sort_keys=True).encode())
    e = html.escape
    cells = []
    dropped = sorted((r for r in rows if r["status"] != OK),
                     key=lambda r: (r["status"], r["key"], r.get("face_key") or ""))
    for r in dropped[:60] + sorted(kept, key=lambda r: r["face_key"])[:24]:
        src = r.get("aligned") if r["status"] == OK else r.get("photo_path")
        img = ""
        try:
            p = Path(src) if src else None
            if p is not None:
                img = thumb(load_rgb(p if p.is_absolute() else out / p), 112, Image.Resampling.BICUBIC, "JPEG")
        except (OSError, ValueError):
            pass
        cells.append(f"<div class=cell>{f'<img src={img!r}>' if img else ''}<div class=key>{e(r.get('face_key') or r['key'])}"
                     f"</div><div class={'ok' if r['status'] == OK else 'bad'}>{e(r['status'])}"
                     f"{' · ' + e(r.get('identity') or '') if r['status'] == OK else ''}</div>"
                     f"<div class=dim>{e(r.get('error') or '')}</div></div>")
    page = (f"<!doctype html><meta charset=utf-8><title>Faces</title><style>{CSS}.grid{{display:grid;"
            f"grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:8px}}.cell{{border:1px solid #ddd;"
            f"padding:4px;font-size:12px;overflow-wrap:anywhere}}.cell img{{width:112px;height:112px;object-fit:cover}}.bad{{color:#b00020}}"
            f".ok{{color:#176e2c}}.dim{{color:#777}}</style>{back_link()}<h1>Faces</h1>"
            f"<p>{report['photos']:,} photos, {report['faces_kept']:,} faces kept, {report['identities']:,} identities "
            f"(at most {report['splits_per_identity_max']} split per identity).</p>"
            f"{kv_table('Rows by status', report['by_status'], ('status', 'rows'))}"
            f"<h2>Dropped (why) and kept (identity)</h2><div class=grid>{''.join(cells)}</div>\n")
    atomic_write_bytes(out / "faces" / "report.html", page.encode())
    write_index(out)
    return report


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    q = np.percentile(np.asarray(values, np.float64), [0, 25, 50, 75, 100])
    return {k: round(float(v), 3) for k, v in zip(("min", "p25", "median", "p75", "max"), q, strict=True)}
