"""The run's front page, `OUT/index.html`: one link to every report the run has, each with its headline.

Every report writer calls `write_index` after writing its page, so the index lists what exists now; each
report links back to it (`html_kit.back_link`). The page is written only when its bytes change and is
left out of the finalize stamps (`files.not_recorded`): several stages refresh it, and a no-op run must
write nothing. Links are relative and nothing is embedded, so the folder can move or be served as is.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from pipeline.core.files import not_recorded, update_bytes
from pipeline.reports.html_kit import CSS

INDEX_PAGE = "index.html"


def _json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _faces(doc: dict[str, Any]) -> str:
    return (f"{doc.get('photos', 0):,} photos, {doc.get('faces_kept', 0):,} faces kept, "
            f"{doc.get('identities', 0):,} identities")


def _captions(doc: dict[str, Any]) -> str:
    tokens = doc.get("tokens") or {}
    return (f"{doc.get('ok', 0):,} images with final captions, {doc.get('mean_captions', 0):.1f} captions per image, "
            f"at most {tokens.get('max', 0)} CLIP tokens ({tokens.get('over_budget', 0)} over 77)")


def _stats(doc: dict[str, Any]) -> str:
    groups = doc.get("groups", {})
    return (f"images with a mask: {', '.join(f'{k} {v:,}' for k, v in (doc.get('images') or {}).items())}; "
            f"HFA {', '.join(groups.get('HFA', [])) or '-'}; RFA {', '.join(groups.get('RFA', [])) or '-'}")


def _shards(doc: dict[str, Any]) -> str:
    splits = ", ".join(f"{k} {v['samples']:,} in {v['shards']} shard(s)" for k, v in (doc.get("splits") or {}).items())
    return f"{doc.get('samples', 0):,} samples ({splits or 'none'}); left out: " + (
        ", ".join(f"{k} {v}" for k, v in (doc.get("left_out") or {}).items()) or "none")


# (title, page, the JSON its headline is read from, how)
REPORTS = [
    ("Faces: detection, alignment, identities", "faces/report.html", "faces/report.json", _faces),
    ("Captions: raw, cleaned, refined", "captions/report.html", "captions/report.json", _captions),
    ("Statistics: classes, groups, EC²Face weights", "stats/report.html", "stats/attributes.json", _stats),
    ("Dataset card (the shards' README)", "shards/README.md", "shards/index.json", _shards),
    ("Caption audit", "captions/audit/report.html", None, None),
]


def render(out: Path) -> str:
    """The page for the reports present in `out` (no dates, no folder name: the same reports give the same
    bytes wherever the run lives)."""
    e = html.escape
    items = []
    for title, page, source, how in REPORTS:
        if not (out / page).exists():
            continue
        doc = _json(out / source) if source else None
        line = how(doc) if doc is not None and how is not None else ""
        items.append(f"<li><a href='{e(page)}'>{e(title)}</a>"
                     f"{f'<div class=dim>{e(line)}</div>' if line else ''}</li>")
    body = "".join(items) or "<li class=dim>no reports yet: run a stage (`facecurate run MANIFEST`)</li>"
    return (f"<!doctype html><html><head><meta charset=utf-8><title>facecurate run</title>"
            f"<style>{CSS}li{{margin:10px 0;font-size:16px}}.dim{{color:#666;font-size:13px}}</style></head>"
            f"<body><h1>facecurate run</h1><p>The reports of this run folder; each links back here. "
            f"<code>facecurate status &lt;this folder&gt;</code> shows what is done, what is pending and what "
            f"to run next.</p><ul>{body}</ul></body></html>\n")


def write_index(out: Path) -> bool:
    """Refresh `OUT/index.html`; returns whether its bytes changed."""
    out = Path(out)
    with not_recorded():
        return update_bytes(out / INDEX_PAGE, render(out).encode())
