"""The caption audit's HTML page: verdict counts, then each image with problems, worst first, sortable."""

from __future__ import annotations

import html
from typing import Any

from pipeline.reports.caption_report import PAGE_CSS, SORT_JS

E = html.escape
MAX_IMAGES = 300
BAD = {"mask_contradiction", "inconsistent", "invented_fact"}


def _image(img: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    thumb = f"<img alt='{E(img['id'])}' src='{img['thumb']}'>" if img.get("thumb") else "<div class=nothumb></div>"
    caps = "".join(
        f"<tr><td>{r['index']}</td><td class=l>{E(r['caption'])}</td>"
        f"<td class='l {'bad' if r['verdict'] in BAD else 'ok' if r['verdict'] == 'accepted' else 'dim'}'>"
        f"{E(r['verdict'])}</td><td class='l dim'>{E(r['detail'])}</td></tr>" for r in rows)
    pairs = "".join(f"<span class='pill bad'>#{c['i']} vs #{c['j']}: {E(c['fact'])}</span>"
                    for c in img["contradictions"])
    ev = ", ".join(f"{E(i)}: {E(e['state'])} <span class=dim>({E(e.get('grade', ''))})</span>"
                   for i, e in (img.get("evidence") or {}).items()) or "<span class=dim>no mask evidence</span>"
    disputes = "".join(f"<span class='pill{' bad' if d['majority'] == 'tie' else ''}'>{E(d['fact'])} "
                       f"{d['for']}:{d['against']} ({E(d['majority'])})</span>" for d in img.get("disputes", []))
    return (f"<div class=img data-key='{E(img['id'])}' data-problems='{img['problems']}' "
            f"data-rejections='{sum(r['verdict'] in BAD for r in rows)}'>{thumb}<div>"
            f"<h3 class=key>{E(img['id'])} <span class=dim>· problems {img['problems']}</span></h3>"
            f"<table><tr><th>#</th><th class=l>caption</th><th class=l>verdict</th><th class=l>why</th></tr>{caps}</table>"
            f"<p><b>Contradicting pairs</b>: {pairs or '<span class=dim>none</span>'}</p>"
            f"<p><b>Disputes</b>: {disputes or '<span class=dim>none</span>'}</p><p><b>Evidence</b>: {ev}</p>"
            f"</div></div>")


def render_audit(audit: Any, summary: dict[str, Any], title: str) -> str:
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in audit.rows:
        by_id.setdefault(r["id"], []).append(r)
    worst = sorted((i for i in audit.images if i["problems"]), key=lambda i: (-i["problems"], i["id"]))[:MAX_IMAGES]
    verdicts = "".join(f"<tr><td class=l>{E(k)}</td><td>{v:,}</td><td>{100 * v / max(summary['captions'], 1):.1f}%</td></tr>"
                       for k, v in summary["verdicts"].items())
    errors = "".join(f"<tr><td class=l>{E(k)}</td><td>{v:,}</td></tr>" for k, v in summary["errors"].items())
    unreadable = [r for r in audit.rows if r["status"] != "ok"][:100]
    bad_files = "".join(f"<tr><td class='l key'>{E(r['id'])}</td><td class=l>{E(r['detail'])}</td></tr>"
                        for r in unreadable)
    head = (f"{summary['images']:,} images, {summary['captions']:,} captions; "
            f"{summary['images_with_problems']:,} images with problems, "
            f"{summary['contradicting_pairs']:,} contradicting caption pairs")
    note = ("Each caption is judged against the image's cleaned captions and mask evidence, as the refine stage "
            "judges candidates." if audit.kind == "run" else
            "Each caption is judged against the image's other captions (leave one out); masks, where given, "
            "are ground truth. unique_fact: a fact no other caption states (information, not an error).")
    parts = [f"<h1>{E(title)}</h1><p>{E(head)}.</p><p class=dim>{E(note)}</p>",
             "<div style='display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start'>",
             f"<table><caption>Verdicts</caption><tr><th class=l>verdict</th><th>captions</th><th>share</th></tr>"
             f"{verdicts or '<tr><td class=l colspan=3>none</td></tr>'}</table>",
             f"<table><caption>Files that could not be audited</caption><tr><th class=l>status</th><th>files</th></tr>"
             f"{errors or '<tr><td class=l colspan=2>none</td></tr>'}</table></div>",
             (f"<details><summary>Unreadable files ({len(unreadable)})</summary><table>{bad_files}</table></details>"
              if unreadable else ""),
             f"<h2>Images with problems</h2><p class=dim>{len(worst)} shown, most problems first.</p>"
             "<div class=sortbar>Sort by: <button onclick=\"sortBy('problems')\">problems</button> "
             "<button onclick=\"sortBy('rejections')\">rejected captions</button> "
             "<button onclick=\"sortBy('key')\">id</button></div><div id=images>",
             *(_image(i, by_id.get(i["id"], [])) for i in worst), "</div>"]
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{E(title)}</title><style>{PAGE_CSS}</style>"
            f"{SORT_JS}</head><body>{''.join(parts)}</body></html>\n")
