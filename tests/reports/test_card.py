"""The dataset card: hostile names, sources and licenses stay text; the YAML header loads back exactly."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.data.shard_assembly import build_index
from pipeline.reports.card import write_card
from pipeline.reports.card_meta import pretty_name

NAME = "evil <script>alert(1)</script> | name\n---\nlicense: mit\n```"
SOURCES = ["photos | extra column", "two\nlines\n---", "<img src=x onerror=alert(1)>"]
LICENSES = ["CC BY | NC", "```\nfenced\n```", "</td><script>x()</script>",
            "[click](http://evil) *bold* _it_ \\"]
MODEL = "org/model`with|pipe<b>"


def _write(tmp_path: Path) -> tuple[str, list[dict]]:
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    (out / "manifest.resolved.yaml").write_text(yaml.safe_dump(
        {"manifest": {"name": NAME}, "models": {"parse": MODEL}}, allow_unicode=True))
    rows = [{"key": f"k{i}", "status": "ok", "split": "train", "source": SOURCES[i % len(SOURCES)],
             "license": LICENSES[i % len(LICENSES)] if i < 8 else None, "fields": ["jpg", "json"],
             "flags": ["captions:weird|flag<b>:x"], "class_pixels": [1] * 19, "captions": 0}
            for i in range(10)]
    rows.append({**rows[0], "key": "bad", "status": "missing_<b>|sketch", "fields": None})
    written = [{"name": "train-000000.tar", "split": "train", "samples": 10, "bytes": 1024,
                "sha256": "0" * 64, "_rows": [r for r in rows if r["status"] == "ok"]}]
    write_card(out, build_index(written, rows, 64, {}), rows)
    return (out / "shards" / "README.md").read_text(), rows


def test_the_front_matter_loads_back_the_exact_strings(tmp_path):
    from huggingface_hub import DatasetCard
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    text, _ = _write(tmp_path)
    match = REGEX_YAML_BLOCK.search(text)  # how the Hub and `datasets` find the header
    assert match is not None
    head = yaml.safe_load(match.group(2))
    pretty = pretty_name(NAME)  # one line, words capitalised, `<script>`, `|`, `: ` and backticks kept as text
    assert pretty == "Evil <script>alert(1)</script> | Name License: Mit ```"
    assert head["pretty_name"] == pretty and head["license"] == "other"
    assert (head["license_name"], head["license_link"]) == ("per-sample", "README.md#licenses")
    assert head["configs"][0]["data_files"] == [{"split": "train", "path": "train-*.tar"}]
    assert head["dataset_info"]["splits"] == [{"name": "train", "num_examples": 10}]
    assert DatasetCard(text).data.to_dict()["pretty_name"] == pretty
    assert text[match.end():].lstrip().startswith("# ")  # the header ended where we ended it


def test_hostile_strings_stay_text_and_tables_keep_their_columns(tmp_path):
    markdown_it = pytest.importorskip("markdown_it")
    text, _ = _write(tmp_path)
    body = text.split("\n---\n", 1)[1]
    assert "<script" not in body and "<img" not in body

    md = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table")  # raw HTML would pass through
    tokens = md.parse(body)

    def shown(i: int) -> str:
        """What a reader sees of the inline token at `i`: the rendered HTML without tags, unescaped."""
        rendered = md.renderer.renderInline(tokens[i].children or [], md.options, {})
        return html.unescape(re.sub(r"<[^>]+>", "", rendered))

    assert "<script" not in md.render(body) and "<img" not in md.render(body)
    tables, current, cells = [], None, None
    for i, t in enumerate(tokens):
        if t.type == "table_open":
            current = []
        elif t.type == "tr_open":
            cells = []
        elif t.type in ("th_open", "td_open"):
            cells.append(shown(i + 1))
        elif t.type == "tr_close":
            current.append(cells)
        elif t.type == "table_close":
            tables.append(current)
    assert len(tables) >= 5
    for table in tables:
        assert all(len(r) == len(table[0]) for r in table), table

    flat = lambda s: " ".join(s.split())  # noqa: E731 - newlines collapse to one space
    by_head = {tuple(t[0]): t[1:] for t in tables}
    licenses = {r[0] for r in by_head[("license", "samples")]}
    assert {flat(x) for x in LICENSES} | {"none recorded (the source's terms apply)"} == licenses
    assert {r[0] for r in by_head[("source", "samples")]} == {flat(x) for x in SOURCES}
    assert [r[1] for r in by_head[("setting", "model")]] == [json.dumps(MODEL)]
    h1 = next(i for i, t in enumerate(tokens) if t.type == "heading_open" and t.tag == "h1")
    assert shown(h1 + 1) == pretty_name(NAME)
    paragraphs = [shown(i) for i, t in enumerate(tokens) if t.type == "inline"]
    assert "Left out, by reason (see the shard ledger): missing_<b>|sketch 1." in paragraphs
    flags = next(p for p in paragraphs if p.startswith("Flags: "))
    assert flags == "Flags: captions:weird|flag<b> 10."
