"""The caption report: what cleaning and refinement did to a run's captions, in numbers and per image.

Written by the refine stage's `finalize` into `captions/`: `report.json` (every number),
`token_lengths.png` (final captions' CLIP token counts against the 77 limit) and `report.html`, one
offline file. Numbers: captions per image and how many images have all ten, provenance (refined,
generated, cleaned), token lengths and trimming, slot coverage (share of images whose captions state
a gender, a hair colour, ...), rejections by reason, consistency (images whose captions disagreed,
minority captions left out, contradictions left among final captions) and mask evidence by grade.
Per image (the `max_images` with the most problems first): its thumbnail, raw -> clean -> final
captions, every rejected candidate with its reason, the slot votes, the disputes and the evidence;
the page sorts by problems, rejections or key. Every count is listed most common first with ties by
name (never by set or ledger order), so a rerun on the same ledgers writes the same bytes.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.core.ledger import OK, Ledger, atomic_write_bytes
from pipeline.reports.html_kit import CSS, kv_table, thumb
from pipeline.text.judge import close
from pipeline.text.tokens import CONTEXT_LENGTH

REPORT_DIR = "captions"
MAX_IMAGES = 200
COVERAGE_SLOTS = ("gender", "age", "ethnicity", "skin_tone", "hair_color", "hair_length", "hair_style", "eye_color",
                  "facial_hair", "makeup", "marks", "eyewear", "headwear", "earrings", "necklace", "clothing",
                  "expression", "pose", "gaze", "photo")


def ranked(c: Counter | dict, n: int | None = None) -> dict[str, int]:
    """Most common first, ties by name. `Counter.most_common` keeps ties in insertion order, which for
    facts comes from iterating a set and so changes with PYTHONHASHSEED (and picks a different top n)."""
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n])


def clean_counts(out: Any) -> dict[str, Any]:
    """Headline numbers of a clean ledger: rows per status, trimmed share, rule frequencies."""
    t = Ledger(out, "captions/clean").read(["status", "trimmed", "rules_applied"])
    if not t.num_rows:
        return {"rows": 0}
    ok = t.filter(pc.equal(t["status"], OK))
    rules: dict[str, int] = {}
    for lst in t["rules_applied"].to_pylist():
        for r in lst or []:
            rules[r] = rules.get(r, 0) + 1
    return {"rows": t.num_rows, "ok": ok.num_rows,
            "by_status": ranked({d["values"]: d["counts"] for d in pc.value_counts(t["status"]).to_pylist()}),
            "trimmed": int(pc.sum(ok["trimmed"]).as_py() or 0),
            "rules": ranked(rules)}


def _final_rows(out: Path, keys: set[str] | None) -> list[dict[str, Any]]:
    t = Ledger(out, "captions/final").read(["key", "status", "captions", "provenance", "clip_tokens", "flags", "audit"])
    if keys is not None and t.num_rows:
        t = t.filter(pc.is_in(t["key"], value_set=pa.array(sorted(keys), pa.string())))
    return sorted(t.to_pylist(), key=lambda r: r["key"])


def problems(row: dict[str, Any]) -> int:
    """How much a reviewer should look at an image: contradictions weigh most, then fallbacks, then rejections."""
    score = 0
    for f in row.get("flags") or []:
        if f.startswith(("contradiction:", "mask_contradiction")):
            score += 10
        elif f.startswith(("fallback", "too_few_captions")):
            score += 5
        elif f.startswith("dropped_contradicting="):
            score += 3 * int(f.split("=")[1])
        elif f.startswith("rejected:"):
            score += int(f.split("=")[1])
    return score


def build_report(out: Path, keys: set[str] | None = None, want: int = 10) -> dict[str, Any]:
    """Every number of the report, from the clean and final ledgers (`keys`: restrict to these)."""
    rows = _final_rows(Path(out), keys)
    ok = [r for r in rows if r["status"] == OK]
    n_caps = [len(r["captions"] or []) for r in ok]
    tokens = [n for r in ok for n in (r["clip_tokens"] or [])]
    prov = Counter((p or "").split(":", 1)[0] for r in ok for p in (r["provenance"] or []))
    flags: Counter = Counter()
    rejected: Counter = Counter()
    mask_items: Counter = Counter()
    slots_contradicted: Counter = Counter()
    grades: Counter = Counter()
    disputed = dropped = 0
    for r in ok:
        for f in r["flags"] or []:
            if f.startswith("rejected:"):
                reason, _, n = f[len("rejected:"):].partition("=")
                rejected[reason] += int(n or 1)
            elif f.startswith("mask_contradiction:"):
                mask_items[f.split(":", 1)[1].split("@")[0]] += 1
            elif f.startswith("contradiction:"):
                slots_contradicted[f.split(":", 1)[1].split("@")[0]] += 1
            elif f.startswith("dropped_contradicting="):
                dropped += int(f.split("=")[1])
            else:
                flags[f.split("=")[0]] += 1
        audit = json.loads(r.get("audit") or "{}")
        disputed += bool(audit.get("disputes"))
        for e in (audit.get("evidence") or {}).values():
            grades[f"{e.get('grade')}:{e.get('state')}"] += 1
    coverage: Counter = Counter()
    values: dict[str, Counter] = {s: Counter() for s in COVERAGE_SLOTS}
    for r in ok:
        stated: set[str] = set()
        for text in r["captions"] or []:
            stated |= close(text)[0]
        for f in stated:
            slot, _, v = f.partition(":")
            if slot in values and v != "any":
                values[slot][v] += 1
        for slot in {f.split(":", 1)[0] for f in stated}:
            coverage[slot] += 1
    n = max(len(ok), 1)
    hist = np.bincount(np.asarray(tokens, int), minlength=CONTEXT_LENGTH + 1).tolist() if tokens else []
    return {
        "images": len(rows), "ok": len(ok), "by_status": ranked(Counter(r["status"] for r in rows)),
        "captions": int(sum(n_caps)), "captions_per_image": dict(sorted(Counter(n_caps).items())),
        "want": want, "images_with_all": sum(c >= want for c in n_caps),
        "mean_captions": round(float(np.mean(n_caps)), 2) if n_caps else 0.0,
        "provenance": ranked(prov), "tokens": {
            "max": max(tokens, default=0), "mean": round(float(np.mean(tokens)), 1) if tokens else 0.0,
            "over_budget": sum(t > CONTEXT_LENGTH for t in tokens), "histogram": hist},
        "trimmed_in_refine": sum(int(f.split("=")[1]) for r in ok for f in r["flags"] or [] if f.startswith("trimmed=")),
        "flags": ranked(flags), "rejections": ranked(rejected),
        "consistency": {"images_with_disputes": disputed, "minority_captions_dropped": dropped,
                        "contradictions_left": sum(slots_contradicted.values()),
                        "contradictions_by_slot": ranked(slots_contradicted),
                        "images_with_contradiction": sum(any(f.startswith("contradiction:") for f in r["flags"] or [])
                                                         for r in ok)},
        "mask": {"images_with_evidence": len(ok) - flags.get("no_mask_evidence", 0),
                 "evidence_by_grade": dict(sorted(grades.items())),
                 "contradictions": ranked(mask_items),
                 "images_with_contradiction": sum(any(f.startswith("mask_contradiction:") for f in r["flags"] or [])
                                                  for r in ok)},
        "coverage": {s: round(coverage[s] / n, 3) for s in COVERAGE_SLOTS},
        "top_values": {s: ranked(values[s], 5) for s in COVERAGE_SLOTS},
        "clean": clean_counts(out),
    }


def image_records(out: Path, rows: list[dict[str, Any]], limit: int = MAX_IMAGES) -> list[dict[str, Any]]:
    """Per-image detail for the `limit` images with the most problems: captions at every step and the audit."""
    rows = sorted(rows, key=lambda r: (-problems(r), r["key"]))[:limit]
    keys = [r["key"] for r in rows]
    if not keys:
        return []
    wanted = pa.array(keys, pa.string())

    def by_key(name: str, cols: list[str]) -> dict[str, list[dict]]:
        t = Ledger(out, name).read(["key", *cols])
        t = t.filter(pc.is_in(t["key"], value_set=wanted)) if t.num_rows else t
        got: dict[str, list[dict]] = {}
        for r in t.to_pylist():
            got.setdefault(r["key"], []).append(r)
        return got

    raw = by_key("captions/raw", ["prompt_id", "text", "status"])
    clean = by_key("captions/clean", ["prompt_id", "text", "status", "rules_applied"])
    paths = {}
    index = out / "index.parquet"
    if index.exists():
        import pyarrow.parquet as pq

        t = pq.read_table(index, columns=["key", "path"])
        t = t.filter(pc.is_in(t["key"], value_set=wanted))
        paths = dict(zip(t["key"].to_pylist(), t["path"].to_pylist(), strict=True))
    records = []
    for r in rows:
        audit = json.loads(r.get("audit") or "{}")
        rec = {"key": r["key"], "status": r["status"], "problems": problems(r), "flags": r["flags"] or [],
               "final": list(zip(r["captions"] or [], r["provenance"] or [], strict=True)),
               "raw": {c["prompt_id"]: c["text"] for c in sorted(raw.get(r["key"], []), key=_by_prompt)},
               "clean": [(c["prompt_id"], c["text"], c["status"], c["rules_applied"] or [])
                         for c in sorted(clean.get(r["key"], []), key=_by_prompt)],
               "rejections": audit.get("rejections", []), "votes": audit.get("votes", {}),
               "disputes": audit.get("disputes", []), "evidence": audit.get("evidence", {}), "thumb": ""}
        p = paths.get(r["key"])
        if p:
            try:
                from pipeline.data.images import load_rgb

                rec["thumb"] = thumb(load_rgb(p if Path(p).is_absolute() else out / p), 128,
                                     Image.Resampling.BICUBIC, "JPEG")
            except (OSError, ValueError):
                pass
        records.append(rec)
    return records


def _by_prompt(c: dict[str, Any]) -> tuple[str, str]:
    return c["prompt_id"] or "", c["text"] or ""


def write_report(out: Path, keys: set[str] | None = None, want: int = 10) -> dict[str, Any]:
    """Write captions/report.json, token_lengths.png and report.html; returns the report."""
    out = Path(out)
    report = build_report(out, keys, want)
    folder = out / REPORT_DIR
    atomic_write_bytes(folder / "report.json", json.dumps(report, indent=2, sort_keys=True).encode())
    png = _plot(report)
    atomic_write_bytes(folder / "token_lengths.png", png)
    records = image_records(out, [r for r in _final_rows(out, keys) if r["status"] == OK])
    atomic_write_bytes(folder / "report.html", render_html(report, records, png).encode())
    from pipeline.reports.index_page import write_index

    write_index(out)
    return report


def headline(r: dict[str, Any]) -> str:
    c = r.get("clean", {})
    trimmed = c.get("trimmed", 0) / max(c.get("ok", 0), 1)
    fallback = sum(v for k, v in r["flags"].items() if k.startswith("fallback"))
    cons = r.get("consistency", {})
    return (f"captions: {r['ok']:,} images, {r['mean_captions']:.1f} captions/image ({r['images_with_all']:,} with all {r['want']}), "
            f"max {r['tokens']['max']} CLIP tokens ({r['tokens']['over_budget']} over {CONTEXT_LENGTH}), "
            f"{100 * trimmed:.1f}% trimmed at cleaning, {sum(r['rejections'].values()):,} rejected, "
            f"{fallback:,} fallbacks, {cons.get('minority_captions_dropped', 0):,} minority captions dropped, "
            f"{cons.get('contradictions_left', 0):,} contradictions left, "
            f"{sum(r['mask']['contradictions'].values()):,} mask contradictions")


def print_headline(report: dict[str, Any]) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[dim]{headline(report)}; see captions/report.html[/dim]", highlight=False)


def _plot(r: dict[str, Any]) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = r["tokens"]["histogram"] or [0]
    fig, ax = plt.subplots(figsize=(6, 2.6), dpi=100)
    ax.bar(range(len(hist)), hist, width=1.0, color="#4c72b0")
    ax.axvline(CONTEXT_LENGTH + 0.5, color="#c44e52", linestyle="--", label=f"CLIP limit ({CONTEXT_LENGTH})")
    ax.set_xlabel("CLIP tokens per final caption (with start/end)")
    ax.set_ylabel("captions")
    ax.set_xlim(0, CONTEXT_LENGTH + 3)
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


E = html.escape
PAGE_CSS = CSS + """
.img{border:1px solid #ddd;margin:12px 0;padding:8px;display:grid;grid-template-columns:140px 1fr;gap:10px}
.img img{width:128px;height:128px;object-fit:cover;background:#eee}.nothumb{width:128px;height:128px;background:#eee}
.img h3{margin:0 0 4px;font-size:14px}.img table{width:100%;font-size:12px}.img td{text-align:left}
.bad{color:#b00020}.ok{color:#176e2c}.dim{color:#777}.pill{display:inline-block;border-radius:8px;padding:0 6px;
margin:1px;background:#eee;font-size:11px}.pill.bad{background:#fde7ea}.sortbar{margin:8px 0}
details summary{cursor:pointer}"""
SORT_JS = """<script>
function sortBy(k){const box=document.getElementById('images');
const items=[...box.children];items.sort((a,b)=>k==='key'?a.dataset.key.localeCompare(b.dataset.key):
(+b.dataset[k])-(+a.dataset[k])||a.dataset.key.localeCompare(b.dataset.key));items.forEach(i=>box.appendChild(i));}
</script>"""


def _image_html(rec: dict[str, Any]) -> str:
    img = f"<img alt='{E(rec['key'])}' src='{rec['thumb']}'>" if rec["thumb"] else "<div class=nothumb></div>"
    flags = "".join(f"<span class='pill{' bad' if f.startswith(('contradiction', 'mask_', 'fallback', 'too_few')) else ''}'>"
                    f"{E(f)}</span>" for f in rec["flags"])
    final = "".join(f"<tr><td>{i}</td><td class=l>{E(t)}</td><td class='l dim'>{E(p)}</td></tr>"
                    for i, (t, p) in enumerate(rec["final"]))
    steps = "".join(
        f"<tr><td class='l dim'>{E(pid)}</td><td class=l>{E(rec['raw'].get(pid, ''))}</td>"
        f"<td class=l>{E(text or '')}{'' if status == OK else f' <span class=bad>({E(status)})</span>'}"
        f"<div class=dim>{E(', '.join(rules))}</div></td></tr>" for pid, text, status, rules in rec["clean"])
    rej = "".join(f"<tr><td class='l bad'>{E(x['reason'])}</td><td class=l>{E(x['text'])}</td>"
                  f"<td class='l dim'>{E(x.get('why', ''))}</td></tr>" for x in rec["rejections"])
    votes = "; ".join(f"<b>{E(s)}</b> " + ", ".join(f"{E(v)} {n}" for v, n in vals.items())
                      for s, vals in rec["votes"].items())
    disputes = "".join(f"<span class='pill{' bad' if d['majority'] == 'tie' else ''}'>{E(d['fact'])} "
                       f"{d['for']}:{d['against']} ({E(d['majority'])})</span>" for d in rec["disputes"])
    ev = ", ".join(f"{E(i)}: {E(e['state'])} <span class=dim>({E(e.get('grade', ''))})</span>"
                   for i, e in rec["evidence"].items()) or "<span class=dim>no mask evidence</span>"
    return (f"<div class=img data-key='{E(rec['key'])}' data-problems='{rec['problems']}' "
            f"data-rejections='{len(rec['rejections'])}'>{img}<div>"
            f"<h3 class=key>{E(rec['key'])} <span class=dim>· problems {rec['problems']}</span></h3>{flags}"
            f"<table><caption>Final captions</caption><tr><th>#</th><th class=l>caption</th><th class=l>from</th></tr>"
            f"{final}</table>"
            f"<details><summary>Rejected candidates ({len(rec['rejections'])})</summary><table><tr><th class=l>reason</th>"
            f"<th class=l>candidate</th><th class=l>why</th></tr>{rej or '<tr><td class=l colspan=3>none</td></tr>'}"
            f"</table></details>"
            f"<details><summary>Raw &rarr; clean ({len(rec['clean'])} prompts)</summary><table><tr><th class=l>prompt</th>"
            f"<th class=l>raw</th><th class=l>clean (rules)</th></tr>{steps}</table></details>"
            f"<p><b>Evidence</b>: {ev}</p><p><b>Disputes</b>: {disputes or '<span class=dim>none</span>'}</p>"
            f"<details><summary>Slot votes</summary><p>{votes or 'none'}</p></details></div></div>")


def render_html(r: dict[str, Any], records: list[dict[str, Any]], png: bytes) -> str:
    from pipeline.reports.html_kit import back_link, data_uri

    cov = {s.replace("_", " "): f"{100 * v:.0f}%" for s, v in r["coverage"].items()}
    c = r.get("clean", {})
    cons = r["consistency"]
    shown = (f"{len(records)} of {r['ok']:,} images, most problems first" if records else "no images")
    parts = [
        back_link(),
        f"<h1>Captions</h1><p>{E(headline(r))}.</p>",
        f"<img class=plot alt='CLIP token lengths of final captions' src='{data_uri(png, 'image/png')}'>",
        "<div style='display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start'>",
        kv_table("Captions per image", r["captions_per_image"], ("captions", "images")),
        kv_table("Provenance", r["provenance"], ("from", "captions")),
        kv_table("Rejections by reason", r["rejections"], ("reason", "candidates")),
        kv_table("Consistency", {"images whose captions disagreed": cons["images_with_disputes"],
                                  "minority captions left out": cons["minority_captions_dropped"],
                                  "contradictions left in final captions": cons["contradictions_left"],
                                  **{f"  on {k}": v for k, v in cons["contradictions_by_slot"].items()}}),
        kv_table("Mask evidence (grade:state, items)", r["mask"]["evidence_by_grade"], ("grade:state", "items")),
        kv_table("Mask contradictions by item", r["mask"]["contradictions"], ("item", "captions")),
        kv_table("Flags", r["flags"], ("flag", "images")),
        kv_table("Slot coverage (share of images)", cov, ("slot", "images")),
        kv_table("Cleaning: rows by status", c.get("by_status", {}), ("status", "rows")),
        kv_table("Cleaning: rules applied", c.get("rules", {}), ("rule", "rows")),
        "</div>",
        f"<h2>Images</h2><p class=dim>{E(shown)}.</p><div class=sortbar>Sort by: "
        "<button onclick=\"sortBy('problems')\">problems</button> "
        "<button onclick=\"sortBy('rejections')\">rejections</button> "
        "<button onclick=\"sortBy('key')\">key</button></div><div id=images>",
        *(_image_html(rec) for rec in records), "</div>",
    ]
    return (f"<!doctype html><html><head><meta charset=utf-8><title>Caption report</title><style>{PAGE_CSS}</style>"
            f"{SORT_JS}</head><body>{''.join(parts)}</body></html>\n")

