"""The run's front page: links to the reports present, their headlines, written only when it changes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.core.files import atomic_write_bytes, recording
from pipeline.reports.index_page import write_index


def _run(tmp_path: Path) -> Path:
    out = tmp_path / "my <run>"
    (out / "faces").mkdir(parents=True)
    (out / "faces" / "report.html").write_text("<p>faces</p>")
    (out / "faces" / "report.json").write_text(json.dumps({"photos": 25, "faces_kept": 5, "identities": 2}))
    (out / "shards").mkdir()
    (out / "shards" / "README.md").write_text("# card")
    (out / "shards" / "index.json").write_text(json.dumps(
        {"samples": 5, "splits": {"train": {"samples": 5, "shards": 1}}, "left_out": {"missing_mask": 1}}))
    return out


def test_the_index_links_what_exists_and_is_not_part_of_a_stages_files(tmp_path):
    out = _run(tmp_path)
    with recording() as written:
        atomic_write_bytes(out / "faces" / "report.html", b"<p>faces</p>")
        assert write_index(out)
    assert written == [out / "faces" / "report.html"]  # the shared page is nobody's finalize output
    page = (out / "index.html").read_text()
    assert "href='faces/report.html'" in page and "25 photos, 5 faces kept, 2 identities" in page
    assert "href='shards/README.md'" in page and "5 samples (train 5 in 1 shard(s)); left out: missing_mask 1" in page
    assert "captions/report.html" not in page and "stats/report.html" not in page  # not made yet: no dead link
    assert "my &lt;run&gt;" not in page and "my <run>" not in page  # the same bytes wherever the run lives
    mtime = (out / "index.html").stat().st_mtime_ns
    assert not write_index(out) and (out / "index.html").stat().st_mtime_ns == mtime  # same bytes: untouched
    (out / "captions").mkdir()
    (out / "captions" / "report.html").write_text("x")
    assert write_index(out) and "href='captions/report.html'" in (out / "index.html").read_text()


def test_the_index_renders_its_links_in_chromium(tmp_path):
    from tools.screenshot_report import find_chromium

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no Chromium on PATH (apt-get install -y chromium)")
    out = _run(tmp_path)
    write_index(out)
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (out / "index.html").as_uri()], capture_output=True, text=True, timeout=90).stdout
    assert ">Faces: detection, alignment, identities</a>" in dom and ">Dataset card (the shards' README)</a>" in dom
    assert "<h1>facecurate run</h1>" in dom
