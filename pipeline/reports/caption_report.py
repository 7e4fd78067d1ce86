"""The caption report: what cleaning and refinement did to a run's captions, in numbers and one plot.

Written by the refine stage's `finalize` into `captions/`: `report.json` (every number), `token_lengths.png`
(histogram of final captions' CLIP token counts against the 77 limit) and `report.html` (a
self-contained section for the run's report). Numbers: captions per image and how many images have all
ten, where captions came from (refined, generated, cleaned), the token-length distribution and the
share of captions trimmed (at cleaning and at refinement), attribute coverage (share of images whose
captions state a hair colour, an expression, ...), rejections by reason, fallbacks, and mask evidence
(images with a mask, contradictions found by item).
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

from pipeline.core.ledger import OK, Ledger, atomic_write_bytes
from pipeline.text.lexicon import CATEGORIES, extract_all
from pipeline.text.tokens import CONTEXT_LENGTH

REPORT_DIR = "captions"


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
            "by_status": {d["values"]: d["counts"] for d in pc.value_counts(t["status"]).to_pylist()},
            "trimmed": int(pc.sum(ok["trimmed"]).as_py() or 0),
            "rules": dict(sorted(rules.items(), key=lambda kv: -kv[1]))}


def build_report(out: Path, keys: set[str] | None = None, want: int = 10) -> dict[str, Any]:
    """Every number of the report, from the clean and final ledgers (`keys`: restrict to these)."""
    t = Ledger(out, "captions/final").read(["key", "status", "captions", "provenance", "clip_tokens", "flags"])
    if keys is not None and t.num_rows:
        t = t.filter(pc.is_in(t["key"], value_set=pa.array(sorted(keys), pa.string())))
    rows = t.to_pylist()
    ok = [r for r in rows if r["status"] == OK]
    n_caps = [len(r["captions"] or []) for r in ok]
    tokens = [n for r in ok for n in (r["clip_tokens"] or [])]
    prov = Counter((p or "").split(":", 1)[0] for r in ok for p in (r["provenance"] or []))
    flags = Counter()
    rejected: Counter = Counter()
    contradictions: Counter = Counter()
    for r in ok:
        for f in r["flags"] or []:
            if f.startswith("rejected:"):
                reason, _, n = f[len("rejected:"):].partition("=")
                rejected[reason] += int(n or 1)
            elif f.startswith("mask_contradiction:"):
                contradictions[f.split(":", 1)[1].split("@")[0]] += 1
            else:
                flags[f.split("=")[0]] += 1
    coverage: Counter = Counter()
    values: dict[str, Counter] = {c: Counter() for c in CATEGORIES}
    for r in ok:
        facts = extract_all(r["captions"] or [])
        for c in facts.categories():
            coverage[c] += 1
        for f in facts.asserted:
            c, v = f.split(":", 1)
            values[c][v] += 1
    n = max(len(ok), 1)
    hist = np.bincount(np.asarray(tokens, int), minlength=CONTEXT_LENGTH + 1).tolist() if tokens else []
    return {
        "images": len(rows), "ok": len(ok), "by_status": dict(Counter(r["status"] for r in rows)),
        "captions": int(sum(n_caps)), "captions_per_image": dict(sorted(Counter(n_caps).items())),
        "want": want, "images_with_all": sum(c >= want for c in n_caps),
        "mean_captions": round(float(np.mean(n_caps)), 2) if n_caps else 0.0,
        "provenance": dict(prov), "tokens": {
            "max": max(tokens, default=0), "mean": round(float(np.mean(tokens)), 1) if tokens else 0.0,
            "over_budget": sum(t > CONTEXT_LENGTH for t in tokens), "histogram": hist},
        "trimmed_in_refine": sum(int(f.split("=")[1]) for r in ok for f in r["flags"] or [] if f.startswith("trimmed=")),
        "flags": dict(flags.most_common()), "rejections": dict(rejected.most_common()),
        "mask": {"images_with_evidence": len(ok) - flags.get("no_mask_evidence", 0),
                 "contradictions": dict(contradictions.most_common()),
                 "images_with_contradiction": sum(any(f.startswith("mask_contradiction:") for f in r["flags"] or [])
                                                  for r in ok)},
        "coverage": {c: round(coverage[c] / n, 3) for c in CATEGORIES},
        "top_values": {c: dict(values[c].most_common(5)) for c in CATEGORIES},
        "clean": clean_counts(out),
    }


def write_report(out: Path, keys: set[str] | None = None, want: int = 10) -> dict[str, Any]:
    """Write captions/report.json, token_lengths.png and report.html; returns the report."""
    out = Path(out)
    report = build_report(out, keys, want)
    folder = out / REPORT_DIR
    atomic_write_bytes(folder / "report.json", json.dumps(report, indent=2).encode())
    _plot(report, folder / "token_lengths.png")
    atomic_write_bytes(folder / "report.html", _html(report).encode())
    return report


def headline(r: dict[str, Any]) -> str:
    c = r.get("clean", {})
    trimmed = c.get("trimmed", 0) / max(c.get("ok", 0), 1)
    fallback = sum(v for k, v in r["flags"].items() if k.startswith("fallback"))
    return (f"captions: {r['ok']:,} images, {r['mean_captions']:.1f} captions/image ({r['images_with_all']:,} with all {r['want']}), "
            f"max {r['tokens']['max']} CLIP tokens ({r['tokens']['over_budget']} over {CONTEXT_LENGTH}), "
            f"{100 * trimmed:.1f}% trimmed at cleaning, {sum(r['rejections'].values()):,} rejected, "
            f"{fallback:,} fallbacks, {sum(r['mask']['contradictions'].values()):,} mask contradictions")


def print_headline(report: dict[str, Any]) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[dim]{headline(report)}; see captions/report.html[/dim]", highlight=False)


def _plot(r: dict[str, Any], path: Path) -> None:
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
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _table(title: str, items: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in items.items())
    return f"<h3>{html.escape(title)}</h3><table>{rows or '<tr><td>none</td></tr>'}</table>"


def _html(r: dict[str, Any]) -> str:
    cov = {k: f"{100 * v:.0f}%" for k, v in r["coverage"].items()}
    c = r.get("clean", {})
    parts = [
        '<section id="captions"><h2>Captions</h2>', f"<p>{html.escape(headline(r))}.</p>",
        '<img src="token_lengths.png" alt="CLIP token lengths of final captions">',
        _table("Captions per image", r["captions_per_image"]), _table("Provenance", r["provenance"]),
        _table("Attribute coverage (share of images)", cov), _table("Rejections by reason", r["rejections"]),
        _table("Flags", r["flags"]), _table("Mask contradictions by item", r["mask"]["contradictions"]),
        _table("Cleaning: rows by status", c.get("by_status", {})), _table("Cleaning: rules applied", c.get("rules", {})),
        "</section>",
    ]
    style = "<style>table{border-collapse:collapse}td{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
    return f"<!doctype html><meta charset=utf-8><title>Caption report</title>{style}{''.join(parts)}\n"
