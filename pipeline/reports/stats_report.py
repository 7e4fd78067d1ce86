"""The statistics report: log-scale plots and a self-contained `stats/report.html` from the attributes document.

It takes the document the stats stage wrote (`stats/attributes.json`, built by `pipeline.data.attributes`)
and the run's ledgers for the sample thumbnails. The page embeds everything (plots, thumbnails, CSS) as
data URIs, so it opens anywhere, offline, as one file: a summary, the group rule, a per-class table, the
plots, a grid of image / mask / sketch triplets with their first final captions and the keys where the parsers disagree most. No dates,
versions or absolute paths: the same document gives the same bytes.
"""

from __future__ import annotations

import hashlib
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.core.ledger import OK, atomic_write_bytes
from pipeline.core.stage import StageContext
from pipeline.data.images import load_rgb
from pipeline.data.labels import NAMES, PALETTE, colorize
from pipeline.reports.html_kit import CSS as BASE_CSS
from pipeline.reports.html_kit import back_link, data_uri, kv_table, thumb

GROUP_COLOURS = {"HFA": "#1f77b4", "NFA": "#7f7f7f", "RFA": "#d62728"}


def _png(fig) -> bytes:
    """PNG bytes without the `Software` chunk matplotlib adds by default (its version: a matplotlib
    upgrade alone would change every plot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def plots(doc: dict[str, Any]) -> dict[str, bytes]:
    """name -> PNG bytes: pixel share and occurrence per split, share vs occurrence, EC²Face weights."""
    from matplotlib.figure import Figure

    views = [k for k in doc["images"] if k != "all"] or ["all"]
    x = np.arange(len(NAMES))
    out = {}
    for metric, title in (("pixel_share", "mean pixel share per class"), ("occurrence", "occurrence per class")):
        fig = Figure(figsize=(10, 3.6))
        ax = fig.subplots()
        width = 0.8 / len(views)
        for j, v in enumerate(views):
            vals = [c[metric][v] or np.nan for c in doc["classes"]]  # a zero has no log: no bar
            ax.bar(x + j * width - 0.4 + width / 2, vals, width, label=f"{v} ({doc['images'][v]})")
        ax.set_yscale("log")
        ax.set_xticks(x, NAMES, rotation=60, ha="right")
        ax.set_title(f"{title} (log scale)")
        ax.legend(fontsize=8)
        out[metric] = _png(fig)
    ref = doc["groups"]["reference_split"]
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    shown = [c for c in doc["classes"] if c["pixel_share"][ref] and c["occurrence"][ref]]
    for c in shown:  # absent from the split: no place on a log-log plot (the table lists it)
        ax.scatter(c["pixel_share"][ref], c["occurrence"][ref], color=GROUP_COLOURS[c["group"]], zorder=3)
    rule = doc["groups"]["rule"]
    for v, style in ((rule["hfa_share"], "--"), (rule["rfa_share"], ":")):
        ax.axvline(v, color="k", linestyle=style, linewidth=0.8)
    for v, style in ((rule["hfa_occurrence"], "--"), (rule["rfa_occurrence"], ":")):
        ax.axhline(v, color="k", linestyle=style, linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if shown:  # headroom, so labels of the points at occurrence 1 stay inside the axes
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 1.35)
    _label_points(fig, ax, [(c["pixel_share"][ref], c["occurrence"][ref], f"{c['id']} {c['name']}",
                             GROUP_COLOURS[c["group"]]) for c in shown])
    ax.set_xlabel(f"mean pixel share ({ref})")
    ax.set_ylabel(f"occurrence ({ref})")
    ax.set_title("groups: HFA blue, NFA grey, RFA red\n(dashed: HFA bounds, dotted: RFA bounds)", fontsize=9)
    out["groups"] = _png(fig)
    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots()
    ax.bar(x, doc["ec2face"]["weights"], color=[GROUP_COLOURS[c["group"]] for c in doc["classes"]])
    ax.set_yscale("log")
    ax.set_xticks(x, NAMES, rotation=60, ha="right")
    ax.set_title(f"EC²Face Eq. 10 weights, w_c = ΣT / (19·T_c + 1), from {ref} (log scale)")
    out["ec2face_weights"] = _png(fig)
    return out


OFFSETS = [(5, 4), (5, -11), (-5, 4), (-5, -11), (5, 14), (5, -21), (-5, 14), (-5, -21), (5, 24), (5, -31)]


def _label_points(fig, ax, points: list[tuple[float, float, str, str]], size: float = 7) -> None:
    """Label each point beside it, trying a few offsets (points) and taking the first whose box overlaps
    neither another label nor a marker and stays inside the axes: classes of a face dataset crowd
    together (nose, hair, neck at occurrence 1). A label moved away from its point gets a thin leader."""
    to_px = fig.dpi / 72
    ax.figure.canvas.draw()  # final limits and transforms
    frame = ax.get_window_extent()
    xy = [ax.transData.transform((x, y)) for x, y, _, _ in points]
    boxes: list[tuple[float, float, float, float]] = [(px - 4, py - 4, px + 4, py + 4) for px, py in xy]

    def free(b: tuple[float, float, float, float]) -> bool:
        inside = frame.x0 <= b[0] and b[2] <= frame.x1 and frame.y0 <= b[1] and b[3] <= frame.y1
        return inside and not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in boxes)

    for (x, y, text, colour), (px, py) in zip(points, xy, strict=True):
        w, h = 0.6 * size * to_px * len(text), size * to_px * 1.2
        for i, (dx, dy) in enumerate(OFFSETS):
            left = px + dx * to_px if dx > 0 else px + dx * to_px - w
            box = (left, py + dy * to_px, left + w, py + dy * to_px + h)
            if free(box) or i == len(OFFSETS) - 1:
                break
        boxes.append(box)
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=size, color=colour,
                    ha="left" if dx > 0 else "right", va="bottom",
                    arrowprops={"arrowstyle": "-", "color": "#bbb", "linewidth": 0.5} if i > 1 else None)


def sample_triplets(ctx: StageContext, n: int, size: int = 176) -> list[dict[str, str]]:
    """Up to `n` keys of the stats ledger (picked by key hash, so the choice is stable) as thumbnails."""
    t = ctx.ledger("stats").read(["key", "status", "agreement"])
    t = t.filter(pc.equal(t["status"], OK))
    agreement = dict(zip(t["key"].to_pylist(), t["agreement"].to_pylist(), strict=True))
    chosen = sorted(agreement, key=lambda k: hashlib.sha1(k.encode()).hexdigest())[:n]
    index = {r["key"]: r["path"] for r in ctx.index(["key", "path"]).to_pylist() if r["key"] in set(chosen)}
    sketches = {r["key"]: r["sketch"] for r in ctx.ledger("sketch").read(["key", "status", "sketch"]).to_pylist()
                if r["status"] == OK and r["key"] in set(chosen)}
    final = ctx.ledger("refine").read(["key", "status", "captions"])
    final = final.filter(pc.and_(pc.equal(final["status"], OK), pc.is_in(final["key"], value_set=pa.array(
        chosen, pa.string())))) if final.num_rows else final
    captions = dict(zip(final["key"].to_pylist(), final["captions"].to_pylist(), strict=True)) if final.num_rows else {}
    out = []
    for key in sorted(chosen):
        item = {"key": key, "agreement": agreement[key], "captions": (captions.get(key) or [])[:3]}
        try:
            path = Path(index[key])
            item["image"] = thumb(load_rgb(path if path.is_absolute() else ctx.out / path), size,
                                   Image.Resampling.BICUBIC, "JPEG")
            with Image.open(ctx.out / "masks" / f"{key}.png") as m:
                item["mask"] = thumb(Image.fromarray(colorize(np.asarray(m))), size, Image.Resampling.NEAREST)
            if key in sketches and (ctx.out / sketches[key]).exists():
                with Image.open(ctx.out / sketches[key]) as s:
                    item["sketch"] = thumb(s.convert("L"), size, Image.Resampling.BILINEAR)
        except Exception as e:  # noqa: BLE001 - a missing file shows as a note in the grid, not a failed report
            # relative to the run folder: the page is the same wherever the run lives
            item["error"] = f"{type(e).__name__}: {e}".replace(f"{ctx.out}/", "")
        out.append(item)
    return out


CSS = BASE_CSS + """
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}
.cell{border:1px solid #ddd;padding:6px}.cell img{width:176px;height:176px;object-fit:contain;background:#eee}
.HFA{color:#1f77b4}.RFA{color:#d62728}.NFA{color:#555}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #999;vertical-align:middle}
.caps{font-size:13px;margin:6px 0 0 18px;padding:0}.caps li{margin:2px 0}.dim{color:#777;font-size:13px}"""


def render_html(doc: dict[str, Any], figures: dict[str, bytes], samples: list[dict[str, str]], title: str) -> str:
    e = html.escape
    views = list(doc["images"])
    head = "".join(f"<th>share {e(v)}</th><th>occ. {e(v)}</th>" for v in views)
    rows = []
    for c in doc["classes"]:
        colour = "#" + "".join(f"{int(v):02x}" for v in PALETTE[c["id"]])
        cells = "".join(f"<td>{c['pixel_share'][v]:.4%}</td><td>{c['occurrence'][v]:.1%}</td>" for v in views)
        rows.append(f"<tr><td>{c['id']}</td><td class=l><span class=sw style='background:{colour}'></span> "
                    f"{e(c['name'])}</td><td class='l {c['group']}'>{c['group']}</td>{cells}"
                    f"<td>{c['ec2face_weight']:.4g}</td></tr>")
    cells = []
    for s in samples:
        imgs = "".join(f"<img alt='{k}' src='{s[k]}'>" if k in s else f"<img alt='no {k}'>"
                       for k in ("image", "mask", "sketch"))
        agree = "" if s["agreement"] is None else f" · agreement {s['agreement']:.2f}"
        note = f"<div>{e(s['error'])}</div>" if "error" in s else ""
        caps = "".join(f"<li>{e(c)}</li>" for c in s.get("captions") or [])
        caps = f"<ol class=caps>{caps}</ol>" if caps else "<p class=dim>no final captions (run refine)</p>"
        cells.append(f"<div class=cell><div class=key>{e(s['key'])}{agree}</div>{imgs}{note}{caps}</div>")
    ag = doc["agreement"]
    low = "".join(f"<tr><td class=l>{e(x['key'])}</td><td>{x['agreement']:.3f}</td></tr>" for x in ag["low_keys"][:50])
    sk = doc["sketch"]
    sketch_line = (f"{sk['images']:,} sketches, {sk['no_face']:,} without a detected face (whole image drawn), "
                   f"mean ink {sk['ink_mean']:.1%}" if sk["images"] else "no sketches yet (run the sketch stage)")
    figs = "".join(f"<h3>{e(name.replace('_', ' '))}</h3><img class=plot alt='{e(name)}' src='{data_uri(png, 'image/png')}'>"
                   for name, png in figures.items())
    counts = ", ".join(f"{e(k)}: {v:,}" for k, v in doc["images"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(title)}</title><style>{CSS}</style></head>
<body>{back_link()}<h1>{e(title)}</h1><p>Images with a mask: {counts}. Primary parser: {e(json.dumps(doc['parsers']))}.
Masks counted at {doc['resolution']}x{doc['resolution']} (nearest); a class occurs in an image when it covers at
least {doc['min_share']:.2%} of it.</p>
<h2>Groups</h2><p>{e(doc['groups']['text'])} Computed on split <b>{e(doc['groups']['reference_split'])}</b>.
HFA: {e(', '.join(doc['groups']['HFA']) or '-')}. RFA: {e(', '.join(doc['groups']['RFA']) or '-')}.</p>
<p>EC²Face Eq. 10 weight per class: {e(doc['ec2face']['formula'])} with T_c the class's pixels on
{e(doc['ec2face']['reference_split'])} and n_c = {doc['ec2face']['n_classes']}.</p>
<h2>Classes</h2><table><tr><th>id</th><th class=l>class</th><th class=l>group</th>{head}<th>EC²Face w</th></tr>
{''.join(rows)}</table>
<h2>Plots</h2>{figs}
<h2>Samples: image, mask, sketch and the first final captions</h2><div class=grid>{''.join(cells)}</div>
<h2>Parser agreement</h2><p>{ag['low_count']:,} key(s) with agreement (mIoU between parsers) below
{ag['low_threshold']}; the lowest:</p><table><tr><th class=l>key</th><th>agreement</th></tr>{low}</table>
<h2>Sketches</h2><p>{e(sketch_line)}</p></body></html>"""


def write_report(ctx: StageContext, doc: dict[str, Any], samples: int) -> None:
    """One PNG per plot and `stats/report.html` (each written atomically) for the attributes document `doc`.

    Args:
        ctx: the run (its ledgers give the `samples` image / mask / sketch thumbnails).
        doc: the attributes document (`pipeline.data.attributes.attributes`).
        samples: triplets shown in the report (0 for none).
    """
    folder = ctx.out / "stats"
    figures = plots(doc) if doc["images"]["all"] else {}
    for name, png in figures.items():
        atomic_write_bytes(folder / f"{name}.png", png)
    triplets = sample_triplets(ctx, samples) if samples else []
    page = render_html(doc, figures, triplets, f"facecurate statistics: {ctx.out.name}")
    faces = ctx.out / "faces" / "report.json"
    if faces.exists():
        page = page.replace("</body></html>", faces_section(json.loads(faces.read_text())) + "</body></html>")
    atomic_write_bytes(folder / "report.html", page.encode())
    from pipeline.reports.index_page import write_index

    write_index(ctx.out)


def faces_section(r: dict[str, Any]) -> str:
    """The faces view: faces per photo, sizes, sharpness, pose, identities, and what was dropped and why."""
    def table(title: str, items: dict[str, Any], head: tuple[str, str]) -> str:
        order = ("min", "p25", "median", "p75", "max")
        if set(items) <= set(order):
            items = {k: items[k] for k in order if k in items}
        return kv_table(title, items, head)

    return (f"<h2>Faces</h2><p>{r['photos']:,} photos, {r['faces_kept']:,} faces kept, {r['identities']:,} "
            f"identities; at most {r['splits_per_identity_max']} split per identity. Thumbnails of what was "
            f"dropped and why: <a href='../faces/report.html'>faces/report.html</a>.</p>"
            "<div style='display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start'>"
            + table("Rows by status", r["by_status"], ("status", "rows"))
            + table("Faces found per photo", r["faces_found_per_photo"], ("faces", "photos"))
            + table("Faces per identity", r["faces_per_identity"], ("faces", "identities"))
            + table("Face box side (px)", r["face_box_px"], ("quantile", "px"))
            + table("Sharpness (Laplacian variance)", r["sharpness"], ("quantile", "value"))
            + table("Yaw", r["yaw"], ("quantile", "value")) + "</div>")
