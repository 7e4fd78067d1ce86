"""Re-judge captions: a run's final captions after the judge changed, or a caption set a user brings.

Two sources, one output (`verdicts.parquet`, `summary.json`, `report.html` in the audit folder):
- **A run folder** (`captions/final` exists): every final caption is judged against the image's
  cleaned captions and its mask evidence (the evidence the refine stage recorded, else graded afresh
  from the parse ledger and ground-truth masks), exactly as the refine stage judges a candidate.
- **A caption folder** (`<id>.txt`, one caption per line, as MM-CelebA-HQ ships them), optionally with
  `--masks` (`<id>.png` label maps, CelebAMask-HQ ids 0..18, taken as ground truth) and `--images`
  (`<id>.jpg|png` for thumbnails). There are no separate inputs, so each caption is judged against the
  image's other captions (leave one out): `inconsistent` means the others outvote it, and a fact no
  other caption states is `unique_fact` (information, not an error: one caption may see more).
Besides per-caption verdicts, every pair of an image's captions that contradict each other is counted.
Files that cannot be read, are empty, too big, or are links leaving the folder become rows with a
status and a reason; nothing stops the audit.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core.files import atomic_write, atomic_write_bytes
from pipeline.core.ledger import OK, Ledger
from pipeline.text.evidence import grade_evidence, ground_truth, label_pixels
from pipeline.text.judge import Consensus, contradictions

MAX_FILE = 1 << 20  # a caption file over 1 MiB is not a caption file
SCHEMA = pa.schema([("id", pa.string()), ("index", pa.int32()), ("caption", pa.string()),
                    ("provenance", pa.string()), ("verdict", pa.string()), ("detail", pa.string()),
                    ("status", pa.string())])


@dataclass
class Audit:
    """What an audit found; `rows` are per caption (or per unreadable file, with a status)."""

    kind: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.rows if r["status"] == OK]
        verdicts = Counter(r["verdict"] for r in ok)
        return {"kind": self.kind, "images": len(self.images), "captions": len(ok),
                "verdicts": dict(sorted(verdicts.items())),
                "files_with_errors": sum(r["status"] != OK for r in self.rows),
                "errors": dict(sorted(Counter(r["status"] for r in self.rows if r["status"] != OK).items())),
                "images_with_problems": sum(bool(i["problems"]) for i in self.images),
                "contradicting_pairs": sum(len(i["contradictions"]) for i in self.images)}


def _judge_image(audit: Audit, image_id: str, captions: list[tuple[str, str]], inputs: list[str] | None,
                 evidence: dict | None, thumb: str | None) -> None:
    """Judge one image's captions: against `inputs`, or each against the others when inputs is None."""
    texts = [t for t, _ in captions]
    shared = Consensus(inputs, evidence) if inputs is not None else None
    problems = 0
    for i, (text, prov) in enumerate(captions):
        c = shared or Consensus(texts[:i] + texts[i + 1:], evidence)
        reason, detail = c.judge(text)
        if inputs is None and reason == "invented_fact":
            reason, detail = "unique_fact", detail.replace("no caption", "no other caption")
        problems += reason in ("mask_contradiction", "inconsistent", "invented_fact")
        audit.rows.append({"id": image_id, "index": i, "caption": text, "provenance": prov,
                           "verdict": reason or "accepted", "detail": detail, "status": OK})
    pairs = contradictions(texts)
    c = shared or Consensus(texts, evidence)
    audit.images.append({"id": image_id, "problems": problems + len(pairs), "thumb": thumb,
                         "contradictions": [{"i": i, "j": j, "fact": f} for i, j, f in pairs],
                         "evidence": c.evidence, "votes": c.votes(), "disputes": c.disputes()})


def audit_run(out: Path, thumbs: int = 0) -> Audit:
    """Every final caption of a run, judged as the refine stage judges candidates."""
    audit = Audit("run")
    final = Ledger(out, "captions/final").read(["key", "status", "captions", "provenance", "audit"])
    final = final.filter(pc.equal(final["status"], OK))
    clean = Ledger(out, "captions/clean").read(["key", "status", "text"])
    clean = clean.filter(pc.equal(clean["status"], OK))
    inputs: dict[str, list[str]] = {}
    for k, t in zip(clean["key"].to_pylist(), clean["text"].to_pylist(), strict=True):
        inputs.setdefault(k, []).append(t)
    index = pq.read_table(out / "index.parquet", columns=["key", "path", "gt_mask"]) \
        if (out / "index.parquet").exists() else None
    paths = dict(zip(index["key"].to_pylist(), index["path"].to_pylist(), strict=True)) if index else {}
    gt = {k: g for k, g in zip(index["key"].to_pylist(), index["gt_mask"].to_pylist(), strict=True) if g} \
        if index else {}
    fresh = None
    for n, r in enumerate(sorted(final.to_pylist(), key=lambda r: r["key"])):
        recorded = json.loads(r.get("audit") or "{}").get("evidence")
        if recorded is None:
            fresh = fresh if fresh is not None else (grade_evidence(out, gt_masks=gt) or {})
            recorded = fresh.get(r["key"], {})
        thumb = _thumb(out, paths.get(r["key"])) if n < thumbs else None
        _judge_image(audit, r["key"], list(zip(r["captions"] or [], r["provenance"] or [], strict=True)),
                     inputs.get(r["key"], []), recorded, thumb)
    return audit


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def read_caption_file(path: Path, root: Path) -> tuple[list[str], str]:
    """(captions, "") or ([], a reason) for one `<id>.txt`."""
    if path.is_symlink() and not _inside(path, root):
        return [], "link_outside_folder"
    try:
        size = path.stat().st_size
        if size > MAX_FILE:
            return [], "too_big"
        data = path.read_bytes()
    except OSError as e:
        return [], f"unreadable:{type(e).__name__}"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return [], "not_utf8"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines, "") if lines else ([], "empty")


def audit_folder(captions: Path, masks: Path | None = None, images: Path | None = None, thumbs: int = 0) -> Audit:
    """A user's caption set: each image's captions judged leave-one-out, masks as ground truth."""
    audit = Audit("folder")
    files = sorted(p for p in captions.rglob("*.txt") if p.is_file() or p.is_symlink())
    for n, path in enumerate(files):
        image_id = path.relative_to(captions).with_suffix("").as_posix()
        texts, why = read_caption_file(path, captions)
        if why:
            audit.rows.append({"id": image_id, "index": -1, "caption": "", "provenance": path.name,
                               "verdict": "", "detail": why, "status": why.split(":")[0]})
            continue
        evidence = None
        if masks is not None:
            m = masks / f"{image_id}.png"
            pixels = label_pixels(m) if m.is_file() and _inside(m, masks) else None
            evidence = ground_truth(pixels) if pixels else None
        thumb = None
        if images is not None and n < thumbs:
            thumb = next((_thumb(images, str(images / f"{image_id}{ext}")) for ext in (".jpg", ".png", ".jpeg")
                          if (images / f"{image_id}{ext}").is_file()), None)
        _judge_image(audit, image_id, [(t, f"line {i + 1}") for i, t in enumerate(texts)], None, evidence, thumb)
    return audit


def _thumb(root: Path, path: str | None) -> str | None:
    if not path:
        return None
    from PIL import Image

    from pipeline.data.images import load_rgb
    from pipeline.reports.html_kit import thumb

    try:
        p = Path(path)
        return thumb(load_rgb(p if p.is_absolute() else root / p), 112, Image.Resampling.BICUBIC, "JPEG")
    except (OSError, ValueError):
        return None


def write_audit(audit: Audit, dest: Path, title: str) -> dict[str, Any]:
    """verdicts.parquet, summary.json and report.html in `dest`; returns the summary."""
    from pipeline.reports.audit_report import render_audit

    dest.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(audit.rows, schema=SCHEMA)
    atomic_write(dest / "verdicts.parquet", lambda f: pq.write_table(table, f))
    summary = audit.summary()
    atomic_write_bytes(dest / "summary.json", json.dumps(summary, indent=2, sort_keys=True).encode())
    atomic_write_bytes(dest / "report.html", render_audit(audit, summary, title).encode())
    return summary
