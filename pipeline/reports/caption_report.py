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

The ledgers are read one part at a time and summed with Arrow (flags are parsed once per distinct value,
not per row), so memory is one part whatever the run's size; slot coverage reads the captions of every
image up to 100,000 and, above that, of the images whose key hash falls in the first 100,000/N of the
range (`coverage_sample` then says how many): the fact reader costs ~40 µs a caption.
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

from pipeline.core.ledger import OK, Ledger, atomic_write_bytes, hash64, value_counts
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


def _keys_array(keys) -> pa.Array | None:
    if keys is None:
        return None
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        return keys
    return pa.array(sorted(keys), pa.string())


LISTS = {"captions": pa.string(), "provenance": pa.string(), "clip_tokens": pa.int32(), "flags": pa.string(),
         "rules_applied": pa.string()}


def _parts(out: Path, rel: str, columns: list[str], keys: pa.Array | None = None):
    """A ledger's resolved rows one part at a time (only `keys`' rows when given): memory is one part.
    A column a part was written without is nulls of its type."""
    for _, t in Ledger(out, rel).iter_resolved(columns):
        if keys is not None:
            t = t.filter(pc.is_in(t["key"], value_set=keys))
        for name in columns:
            kind = pa.list_(LISTS[name]) if name in LISTS else pa.string()
            if name not in t.column_names:
                t = t.append_column(name, pa.nulls(t.num_rows, kind))
            elif pa.types.is_null(t[name].type):
                t = t.set_column(t.schema.get_field_index(name), name, pa.nulls(t.num_rows, kind))
        if t.num_rows:
            yield t


def clean_counts(out: Any) -> dict[str, Any]:
    """Headline numbers of a clean ledger: rows per status, trimmed share, rule frequencies."""
    rows = ok = trimmed = 0
    status: Counter = Counter()
    rules: Counter = Counter()
    for t in _parts(Path(out), "captions/clean", ["status", "trimmed", "rules_applied"]):
        rows += t.num_rows
        status.update(value_counts(t["status"]))
        good = t.filter(pc.equal(t["status"], OK))
        ok += good.num_rows
        trimmed += int(pc.sum(good["trimmed"]).as_py() or 0)
        rules.update(value_counts(pc.list_flatten(t["rules_applied"])))
    if not rows:
        return {"rows": 0}
    return {"rows": rows, "ok": ok, "by_status": ranked(status), "trimmed": trimmed, "rules": ranked(rules)}


def flag_score(f: str) -> int:
    """How much one flag asks a reviewer to look: contradictions most, then fallbacks, then rejections."""
    if f.startswith(("contradiction:", "mask_contradiction")):
        return 10
    if f.startswith(("fallback", "too_few_captions")):
        return 5
    if f.startswith("dropped_contradicting="):
        return 3 * int(f.split("=")[1])
    if f.startswith("rejected:"):
        return int(f.partition("=")[2] or 1)  # as the report counts them: `rejected:REASON=N`, N 1 if left out
    return 0


def problems(row: dict[str, Any]) -> int:
    """How much a reviewer should look at an image (the sum of its flags' `flag_score`)."""
    return sum(flag_score(f) for f in row.get("flags") or [])


COVERAGE_SAMPLE = 100_000  # images whose captions are read for slot coverage (every image up to this many)
FINAL_COLUMNS = ["status", "captions", "provenance", "clip_tokens", "flags", "audit"]


def _per_row(flags: pa.ChunkedArray | pa.Array, n: int, test) -> np.ndarray:
    """For each row of a list<string> column: whether any of its values passes `test` (on a value)."""
    flat = pc.list_flatten(flags)
    if not len(flat):
        return np.zeros(n, bool)
    values = pc.unique(flat).to_pylist()
    passing = pa.array([v for v in values if test(v)], pa.string())
    hit = pc.is_in(flat, value_set=passing).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(flags).to_numpy(zero_copy_only=False)
    return np.bincount(parents[hit], minlength=n) > 0


def _scores(flags: pa.ChunkedArray | pa.Array, n: int) -> np.ndarray:
    """Each row's `problems` score, from the score of each distinct flag (no Python object per row)."""
    flat = pc.list_flatten(flags)
    if not len(flat):
        return np.zeros(n, np.int64)
    values = pc.unique(flat)
    score = np.array([flag_score(v) for v in values.to_pylist()], np.int64)
    per = score[pc.index_in(flat, value_set=values).to_numpy(zero_copy_only=False)]
    return np.bincount(pc.list_parent_indices(flags).to_numpy(zero_copy_only=False), weights=per,
                       minlength=n).astype(np.int64)


def _scan(out: Path, keys: pa.Array | None, limit: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One pass over the final ledger, one part at a time: the sums the report is made of, and the `limit`
    ok rows with the most problems (ties by key) for the per-image detail."""
    ok_total = sum(int(pc.sum(pc.equal(t["status"], OK)).as_py() or 0)
                   for t in _parts(out, "captions/final", ["status"], keys))
    rate = min(1.0, COVERAGE_SAMPLE / ok_total) if ok_total else 1.0
    s: dict[str, Any] = {"images": 0, "ok": 0, "status": Counter(), "n_caps": Counter(), "prov": Counter(),
                         "hist": np.zeros(CONTEXT_LENGTH + 1, np.int64), "tok_max": 0, "tok_sum": 0, "tok_n": 0,
                         "over": 0, "flag_values": Counter(), "disputed": 0, "grades": Counter(),
                         "contradicted": 0, "mask_contradicted": 0, "coverage": Counter(), "covered": 0,
                         "values": {slot: Counter() for slot in COVERAGE_SLOTS}}
    best: pa.Table | None = None
    for t in _parts(out, "captions/final", FINAL_COLUMNS, keys):
        s["images"] += t.num_rows
        s["status"].update(value_counts(t["status"]))
        t = t.filter(pc.equal(t["status"], OK)).combine_chunks()
        n = t.num_rows
        if not n:
            continue
        s["ok"] += n
        s["n_caps"].update(value_counts(pc.fill_null(pc.list_value_length(t["captions"]), 0)))
        prov = pc.fill_null(pc.list_flatten(t["provenance"]), "")
        s["prov"].update(value_counts(pc.list_element(pc.split_pattern(prov, ":", max_splits=1), 0)))
        tokens = pc.list_flatten(t["clip_tokens"]).to_numpy(zero_copy_only=False).astype(np.int64)
        if len(tokens):
            h = np.bincount(tokens, minlength=CONTEXT_LENGTH + 1)  # longer where a caption is over budget
            if len(h) > len(s["hist"]):
                s["hist"] = np.pad(s["hist"], (0, len(h) - len(s["hist"])))
            s["hist"][:len(h)] += h
            s["tok_max"] = max(s["tok_max"], int(tokens.max()))
            s["tok_sum"] += int(tokens.sum())
            s["tok_n"] += len(tokens)
            s["over"] += int((tokens > CONTEXT_LENGTH).sum())
        s["flag_values"].update(value_counts(pc.list_flatten(t["flags"])))
        s["contradicted"] += int(_per_row(t["flags"], n, lambda f: f.startswith("contradiction:")).sum())
        s["mask_contradicted"] += int(_per_row(t["flags"], n, lambda f: f.startswith("mask_contradiction:")).sum())
        for lo in range(0, n, 1 << 14):
            for audit in t["audit"].slice(lo, 1 << 14).to_pylist():
                audit = json.loads(audit or "{}")
                s["disputed"] += bool(audit.get("disputes"))
                for e in (audit.get("evidence") or {}).values():
                    s["grades"][f"{e.get('grade')}:{e.get('state')}"] += 1
        sample = t if rate >= 1 else t.filter(pa.array(hash64(t["key"]) < np.uint64(rate * 2.0 ** 64)))
        for lo in range(0, sample.num_rows, 1 << 12):
            for caps in sample["captions"].slice(lo, 1 << 12).to_pylist():
                stated: set[str] = set()
                for text in caps or []:
                    stated |= close(text)[0]
                for f in stated:
                    slot, _, v = f.partition(":")
                    if slot in s["values"] and v != "any":
                        s["values"][slot][v] += 1
                for slot in {f.split(":", 1)[0] for f in stated}:
                    s["coverage"][slot] += 1
                s["covered"] += 1
        if limit:
            ranked_rows = t.append_column("_score", pa.array(_scores(t["flags"], n)))
            best = ranked_rows if best is None else pa.concat_tables([best, ranked_rows], promote_options="permissive")
            best = best.take(pc.sort_indices(best, [("_score", "descending"), ("key", "ascending")])[:limit])
    rows = [] if best is None else best.drop_columns(["_score"]).to_pylist()
    return s, rows


def build_report(out: Path, keys: pa.Array | pa.ChunkedArray | set[str] | None = None,
                 want: int = 10) -> dict[str, Any]:
    """Every number of the report, from the clean and final ledgers (`keys`: restrict to these)."""
    return _report(Path(out), _scan(Path(out), _keys_array(keys), 0)[0], want)


def _report(out: Path, s: dict[str, Any], want: int) -> dict[str, Any]:
    flags: Counter = Counter()
    rejected: Counter = Counter()
    mask_items: Counter = Counter()
    slots_contradicted: Counter = Counter()
    dropped = trimmed = 0
    for f, count in s["flag_values"].items():
        if f.startswith("rejected:"):
            reason, _, n = f[len("rejected:"):].partition("=")
            rejected[reason] += int(n or 1) * count
        elif f.startswith("mask_contradiction:"):
            mask_items[f.split(":", 1)[1].split("@")[0]] += count
        elif f.startswith("contradiction:"):
            slots_contradicted[f.split(":", 1)[1].split("@")[0]] += count
        elif f.startswith("dropped_contradicting="):
            dropped += int(f.split("=")[1]) * count
        else:
            flags[f.split("=")[0]] += count
        if f.startswith("trimmed="):
            trimmed += int(f.split("=")[1]) * count
    ok, n_caps = s["ok"], s["n_caps"]
    captions = sum(c * k for c, k in n_caps.items())
    covered = max(s["covered"], 1)
    report = {
        "images": s["images"], "ok": ok, "by_status": ranked(s["status"]),
        "captions": int(captions), "captions_per_image": dict(sorted(n_caps.items())),
        "want": want, "images_with_all": sum(k for c, k in n_caps.items() if c >= want),
        "mean_captions": round(captions / ok, 2) if ok else 0.0,
        "provenance": ranked(s["prov"]), "tokens": {
            "max": s["tok_max"], "mean": round(s["tok_sum"] / s["tok_n"], 1) if s["tok_n"] else 0.0,
            "over_budget": s["over"], "histogram": s["hist"].tolist() if s["tok_n"] else []},
        "trimmed_in_refine": trimmed,
        "flags": ranked(flags), "rejections": ranked(rejected),
        "consistency": {"images_with_disputes": s["disputed"], "minority_captions_dropped": dropped,
                        "contradictions_left": sum(slots_contradicted.values()),
                        "contradictions_by_slot": ranked(slots_contradicted),
                        "images_with_contradiction": s["contradicted"]},
        "mask": {"images_with_evidence": ok - flags.get("no_mask_evidence", 0),
                 "evidence_by_grade": dict(sorted(s["grades"].items())),
                 "contradictions": ranked(mask_items),
                 "images_with_contradiction": s["mask_contradicted"]},
        "coverage": {slot: round(s["coverage"][slot] / covered, 3) for slot in COVERAGE_SLOTS},
        "top_values": {slot: ranked(s["values"][slot], 5) for slot in COVERAGE_SLOTS},
        "clean": clean_counts(out),
    }
    if s["covered"] < ok:
        report["coverage_sample"] = s["covered"]  # coverage read from this many images (by key hash)
    return report


def image_records(out: Path, rows: list[dict[str, Any]], limit: int = MAX_IMAGES) -> list[dict[str, Any]]:
    """Per-image detail for the `limit` images with the most problems: captions at every step and the audit."""
    rows = sorted(rows, key=lambda r: (-problems(r), r["key"]))[:limit]
    keys = [r["key"] for r in rows]
    if not keys:
        return []
    wanted = pa.array(keys, pa.string())

    def by_key(name: str, cols: list[str]) -> dict[str, list[dict]]:
        got: dict[str, list[dict]] = {}
        for t in _parts(out, name, ["key", *cols], wanted):
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


def write_report(out: Path, keys: pa.Array | pa.ChunkedArray | set[str] | None = None,
                 want: int = 10) -> dict[str, Any]:
    """Write captions/report.json, token_lengths.png and report.html; returns the report."""
    out = Path(out)
    stats, top = _scan(out, _keys_array(keys), MAX_IMAGES)
    report = _report(out, stats, want)
    folder = out / REPORT_DIR
    atomic_write_bytes(folder / "report.json", json.dumps(report, indent=2, sort_keys=True).encode())
    png = _plot(report)
    atomic_write_bytes(folder / "token_lengths.png", png)
    records = image_records(out, top)
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
        kv_table("Slot coverage (share of images)" if "coverage_sample" not in r else
                 f"Slot coverage (share of {r['coverage_sample']:,} images chosen by key hash)", cov, ("slot", "images")),
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

