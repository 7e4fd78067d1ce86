"""Reports are byte-deterministic: the same inputs give the same bytes, whatever PYTHONHASHSEED (set
order) and whatever order the ledger rows come in (parts land in the order parallel workers finish)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from pipeline.core.ledger import Ledger
from pipeline.core.stage import StageContext
from pipeline.data.shard_assembly import build_index
from pipeline.reports.card import write_card

ROOT = Path(__file__).resolve().parents[2]
BASE = [("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("_fp", pa.string())]
STRINGS = pa.list_(pa.string())
FINAL = pa.schema(BASE + [("captions", STRINGS), ("provenance", STRINGS),
                          ("clip_tokens", pa.list_(pa.int32())), ("flags", STRINGS), ("audit", pa.string())])
CLEAN = pa.schema(BASE + [("prompt_id", pa.string()), ("prompt_kind", pa.string()), ("text", pa.string()),
                          ("clip_tokens", pa.int32()), ("trimmed", pa.bool_()), ("rules_applied", STRINGS)])
STATS = pa.schema(BASE + [("split", pa.string()), ("parser", pa.string()),
                          ("class_pixels", pa.list_(pa.int64())), ("agreement", pa.float64()),
                          ("sketch_ink", pa.float64()), ("flags", STRINGS)])
# An image's facts (of all its captions) are one set and count once per image, so these colours (and
# the `light` / `dark` they imply) all tie: which five made `top_values` came from iterating that set.
COLOURS = ["blonde", "black", "brown", "red", "grey", "white", "auburn", "silver", "ginger", "dark brown"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _caption_run(out: Path) -> None:
    finals, cleans = [], []
    for n, key in enumerate(["photos/a", "photos/b"]):
        caps = [f"a person with {c} hair" for c in COLOURS]
        finals.append({"key": key, "status": "ok", "error": "", "_fp": "f", "captions": caps,
                       "provenance": [f"{'refined' if i % 2 else 'cleaned'}:p{i}" for i in range(10)],
                       "clip_tokens": [9 + i % 3 for i in range(10)],
                       "flags": [f"rejected:{r}=1" for r in ("invented_fact", "duplicate", "inconsistent")]
                                + ["contradiction:hair_color@0,1", "contradiction:age@2,3", "tie_b", "tie_a"],
                       "audit": json.dumps({"evidence": {}, "votes": {}, "disputes": [], "rejections": []})})
        cleans += [{"key": key, "status": "ok" if i != n else "empty", "error": "", "_fp": "c",
                    "prompt_id": f"p{i}", "prompt_kind": "few_shot", "text": c, "clip_tokens": 9,
                    "trimmed": i % 2 == 0, "rules_applied": ["rule_b", "rule_a"] if i % 2 else ["rule_c"]}
                   for i, c in enumerate(caps)]
    Ledger(out, "captions/final").write(pa.Table.from_pylist(finals, schema=FINAL))
    Ledger(out, "captions/clean").write(pa.Table.from_pylist(cleans, schema=CLEAN))


RENDER = """
import sys
from pathlib import Path
from pipeline.ops.audit_captions import audit_run, write_audit
from pipeline.reports.caption_report import write_report
out = Path(sys.argv[1])
write_report(out)
write_audit(audit_run(out), out / "audit", "audit")
"""


def test_caption_report_and_audit_do_not_depend_on_the_hash_seed(tmp_path):
    out = tmp_path / "run"
    _caption_run(out)
    got = []
    for seed in ("0", "1", "3"):  # three orders of the same set of facts
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", RENDER, str(out)], cwd=ROOT, env=env, check=True, timeout=300)
        audit = {f"audit/{k}": v for k, v in _files(out / "audit").items()}
        got.append({**_files(out / "captions"), **audit})
    names = {"report.json", "report.html", "token_lengths.png", "audit/summary.json", "audit/report.html",
             "audit/verdicts.parquet"}
    assert names <= set(got[0])
    for other in got[1:]:
        assert got[0] == other, [n for n in got[0] if got[0][n] != other.get(n)]
    report = json.loads(got[0]["report.json"])
    assert list(report["rejections"]) == ["duplicate", "inconsistent", "invented_fact"]  # tied: by name
    assert list(report["flags"]) == ["tie_a", "tie_b"]


def _shard_rows() -> list[dict]:
    rows = [{"key": f"k{i}", "status": "ok", "split": ("train", "val")[i % 2],
             "source": ("zeta", "alpha")[i % 2], "license": ("CC BY 4.0", "Public Domain Mark", None)[i % 3],
             "fields": ["jpg", "json"],
             "flags": [("no_sketch", "no_mask")[i % 2], "captions:fallback:x"], "class_pixels": [i] * 19,
             "captions": i % 3} for i in range(12)]
    return rows + [{**rows[0], "key": "bad1", "status": "missing_sketch"},
                   {**rows[0], "key": "bad2", "status": "error"}]


def test_card_index_and_features_do_not_depend_on_row_order(tmp_path):
    got = []
    for seed in (1, 2):
        rows = _shard_rows()
        random.Random(seed).shuffle(rows)
        out = tmp_path / str(seed) / "run"
        ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["key"])
        written = [{"name": f"{sp}-000000.tar", "split": sp, "samples": 6, "bytes": 512, "sha256": "0" * 64,
                    "_rows": [r for r in ok if r["split"] == sp]} for sp in ("train", "val")]
        index = build_index(written, rows, 64, {})
        write_card(out, index, rows)
        got.append({**_files(out / "shards"), "index.json": json.dumps(index, indent=1).encode()})
    assert got[0] == got[1], [n for n in got[0] if got[0][n] != got[1][n]]
    card = got[0]["README.md"].decode()
    assert card.index("| CC BY 4.0 | 4 |") < card.index("| Public Domain Mark | 4 |")  # tied: by name
    assert card.index("| alpha | 6 |") < card.index("| zeta | 6 |")


def test_faces_report_does_not_depend_on_row_order(tmp_path):
    from pipeline.stages.faces import FacesConfig, write_report

    rows = [{"key": f"photos/p{i}", "face_key": f"photos/p{i}", "error": "",
             "status": ("ok", "no_face", "too_blurry")[i % 3], "faces_found": i % 3,
             "identity": f"id-{i // 2:06d}", "bbox": [0, 0, 80 + i, 90],
             "sharpness": 10.0 + i, "yaw": 0.1 * i, "split": "train", "aligned": None, "photo_path": None}
            for i in range(9)]
    got = []
    for seed in (1, 2):
        shuffled = list(rows)
        random.Random(seed).shuffle(shuffled)
        out = tmp_path / str(seed) / "run"
        write_report(out, [dict(r) for r in shuffled], FacesConfig())
        got.append(_files(out / "faces"))
    assert got[0] == got[1], [n for n in got[0] if got[0][n] != got[1][n]]
    page = got[0]["report.html"].decode()
    assert page.index(">no_face<") < page.index(">ok<") < page.index(">too_blurry<")  # 3 each: by name


def test_stats_outputs_do_not_depend_on_the_order_of_ledger_parts(tmp_path):
    from pipeline.stages.stats import StatsConfig, StatsStage

    def part(parser: str, split: str, ink: float) -> pa.Table:
        return pa.Table.from_pylist([
            {"key": f"{split}/{parser}/{ink}", "status": "ok", "error": "", "_fp": "s", "split": split,
             "parser": parser, "class_pixels": [1000 * (c + 1) for c in range(19)], "agreement": 0.3,
             "sketch_ink": ink, "flags": []}], schema=STATS)

    # Reversed, another parser is seen first and the train inks add up in another order:
    # (0.1 + 0.2) + 0.3 != (0.3 + 0.2) + 0.1 in floats, so the mean ink used to follow the part order.
    parts = [part("farl", "val", 0.5), part("segformer", "train", 0.1), part("farl", "train", 0.2),
             part("segformer", "train", 0.3)]
    got = []
    for order in (parts, parts[::-1]):
        out = tmp_path / str(len(got)) / "run"
        ctx = StageContext(out)
        for t in order:
            ctx.ledger("stats").write(t)
        StatsStage.finalize(StatsConfig(samples=0, resolution=64), ctx)
        got.append({n: b for n, b in _files(out / "stats").items() if n.endswith((".json", ".html", ".png"))})
    assert {"attributes.json", "report.html", "pixel_share.png"} <= set(got[0])
    assert got[0] == got[1], [n for n in got[0] if got[0][n] != got[1][n]]
    assert list(json.loads(got[0]["attributes.json"])["parsers"]) == ["farl", "segformer"]
    assert b"Software" not in got[0]["pixel_share.png"]  # no matplotlib version in the PNG
