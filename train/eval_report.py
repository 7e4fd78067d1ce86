"""What ``facecurate evaluate`` leaves for a person: ``metrics.json``, an HTML page of sample grids, a table.

The folder is built under a temporary name and renamed, ``metrics.json`` written last. ``index.html`` shows
the scores, then one row per condition and type: the condition (colour-coded mask, sketch, or "caption
only"), the generated faces, the real face, with the caption; images are PNG files in ``images/`` beside the
page, every text escaped.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
from rich.table import Table

from pipeline.data.files import atomic_dir, atomic_write_text
from train.config import ConfigError

ROWS = [  # (label, key, better): what the table and the page show
    ("FID", "fid", "lower"), ("LPIPS", "lpips", "lower"), ("MS-SSIM", "ms_ssim", "higher"),
    ("mask pixel accuracy", "mask_pixel_accuracy", "higher"), ("mask mIoU", "mask_miou", "higher"),
    ("HFA accuracy / mIoU", "HFA", "higher"), ("NFA accuracy / mIoU", "NFA", "higher"),
    ("RFA accuracy / mIoU", "RFA", "higher"), ("CLIP score", "clip_score", "higher"),
    ("CLIP distance (caption)", "clip_distance", "lower"), ("CLIP image distance (real)", "clip_image_distance", "lower"),
    ("NIQE", "niqe", "lower"),
]


def check_out(dest: Path) -> None:
    """Refuse to replace a folder that holds something other than an earlier evaluation."""
    if dest.is_dir() and any(dest.iterdir()) and not (dest / "metrics.json").exists() and not (dest / "index.html").exists():
        raise ConfigError(f"--out {dest} exists and is not an evaluation folder (no metrics.json): choose another")


def cell(block: dict, key: str) -> str:
    """One metric of one set, formatted ('-' when absent)."""
    if key in ("HFA", "NFA", "RFA"):
        g = (block.get("mask_groups") or {}).get(key) or {}
        acc, miou = g.get("pixel_accuracy"), g.get("miou")
        return "-" if acc is None and miou is None else f"{_f(acc)} / {_f(miou)}"
    return _f(block.get(key))


def _f(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) >= 10 else f"{v:.4f}"


def table(report: dict) -> Table:
    sets = list(report["metrics"])
    t = Table(title=f"evaluate {report['checkpoint']['checkpoint']} on {report['split']} "
                    f"({report['reference']['images']} conditions)", title_justify="left", header_style="bold")
    for col in ("metric", *sets, "real (reference)"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for label, key, better in ROWS:
        t.add_row(f"{label} {'↓' if better == 'lower' else '↑'}", *[cell(report["metrics"][s], key) for s in sets],
                  cell(report["reference"], key))
    return t


def next_step(report: dict) -> str:
    out = report.get("out", "")
    return (f"next: open {out}/index.html to look at the faces; compare another checkpoint with the same options "
            f"(`facecurate evaluate RUN/ckpt/step_N --shards {report['shards']} --split {report['split']} --out ...`), "
            f"and read {out}/metrics.json (`notes` says what is not comparable with published numbers)")


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(image).save(path, format="PNG")


def _condition_preview(c, kind: str) -> np.ndarray | None:
    from pipeline.data.labels import colorize

    if kind == "mask" and c.mask is not None:
        return colorize(c.mask)
    if kind == "sketch" and c.sketch is not None:
        return np.repeat(c.sketch[..., None], 3, axis=-1)
    return None


def write_eval_dir(dest: Path, report: dict, conditions, generated: dict, per_face: dict, grid_rows: int) -> None:
    """``dest/{metrics.json, index.html, images/}``, replacing an earlier evaluation whole."""
    e = html.escape
    rows = []
    with atomic_dir(dest) as tmp:
        img_dir = tmp / "images"
        img_dir.mkdir()
        shown = range(min(grid_rows, len(conditions)))
        for i in shown:
            c = conditions[i]
            _save_png(img_dir / f"{i:04d}_real.png", c.image)
            for kind, g in generated.items():
                faces = np.flatnonzero(g.index == i)
                if not len(faces):
                    continue
                preview = _condition_preview(c, kind)
                cond = '<div class="cond text">caption only</div>'
                if preview is not None:
                    _save_png(img_dir / f"{i:04d}_{kind}_condition.png", preview)
                    cond = f'<img src="images/{i:04d}_{kind}_condition.png" alt="{kind} condition">'
                cells = []
                for j, f in enumerate(faces):
                    name = f"images/{i:04d}_{kind}_{j}.png"
                    _save_png(tmp / name, g.images[f])
                    tip = ", ".join(f"{k} {_f(float(v[f]))}" for k, v in per_face[kind].items() if k != "confusion")
                    cells.append(f'<img src="{name}" alt="generated {j}" title="{e(tip)}">')
                rows.append(f'<section class="row"><p><b>{e(kind)}</b> <code>{e(c.key)}</code> '
                            f'<span class="prompt">{e(c.caption)}</span></p><div class="grid">{cond}'
                            f'<span class="sep"></span>{"".join(cells)}<span class="sep"></span>'
                            f'<img src="images/{i:04d}_real.png" alt="real"></div></section>')
        sets = list(report["metrics"])
        head = "".join(f"<th>{e(s)}</th>" for s in (*sets, "real (reference)"))
        body = "".join(f"<tr><td>{e(label)} {'↓' if better == 'lower' else '↑'}</td>"
                       + "".join(f"<td>{e(cell(report['metrics'][s], key))}</td>" for s in sets)
                       + f"<td>{e(cell(report['reference'], key))}</td></tr>" for label, key, better in ROWS)
        p = report["protocol"]
        notes = "".join(f"<li>{e(n)}</li>" for n in report.get("notes", []))
        page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>evaluate: {e(report['checkpoint']['checkpoint'])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}}td:first-child,th:first-child{{text-align:left}}
.grid{{display:flex;gap:4px;align-items:center}}.grid img,.cond{{width:96px;height:96px;image-rendering:pixelated}}
.cond{{display:flex;align-items:center;justify-content:center;background:#eee;font-size:.8rem}}
.sep{{width:12px}}.prompt{{color:#333}}code{{color:#666}}</style></head><body>
<h1>Generated faces: {e(report['checkpoint']['checkpoint'])}</h1>
<p>split <b>{e(report['split'])}</b> of {e(report['shards'])}; {p['per_condition']} faces per condition and type,
{p['steps']} {e(p['sampler'])} steps, CFG {p['cfg_scale']}, seed {p['seed']}; parser
{e(str((report.get('parser') or {}).get('model', '-')))}.</p>
<table><tr><th>metric</th>{head}</tr>{body}</table><ul class="notes">{notes}</ul>
<h2>Samples: condition | generated | real</h2>
{''.join(rows)}
</body></html>
"""
        atomic_write_text(tmp / "index.html", page)
        atomic_write_text(tmp / "metrics.json", json.dumps(report, indent=1, default=_json))  # last: complete


def _json(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, Path):
        return str(v)
    raise TypeError(f"not JSON: {type(v).__name__}")
