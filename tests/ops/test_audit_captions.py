"""`facecurate audit-captions`: a run's final captions re-judged, and a user's caption folder with masks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.config import RunnerConfig, from_dict
from pipeline.core.ledger import Ledger
from pipeline.core.runner import run_stage
from pipeline.core.stage import StageContext
from pipeline.stages.clean import CleanConfig
from tests.captions_data import face_pixels, ingested, keys, write_parse, write_raw


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_run_is_rejudged_against_its_cleaned_captions_and_recorded_evidence(demo_data, tmp_path):
    out = ingested(demo_data, tmp_path)
    k0, k1 = keys(out)[:2]
    inputs = [("p0", "A young woman with long brown hair, smiling."), ("p1", "She is not wearing any glasses or earrings."),
              ("p2", "A woman with long brown hair.")]
    write_raw(out, [{"key": k, "prompt_id": pid, "text": t, "prompt_kind": "detail"} for k in (k0, k1) for pid, t in inputs])
    run_stage("clean", from_dict(CleanConfig, {}, "stages.clean"), StageContext(out), RunnerConfig())
    write_parse(out, {k0: face_pixels(ear_r=400)}, {k0: face_pixels(ear_r=400)})  # both parsers: earrings
    # final captions as an older judge let them through: an invented scarf, the minority's glasses
    rows = [{"key": k0, "status": "ok", "error": "", "_fp": "old", "captions": [
        "A smiling young woman with long brown hair.", "A young woman with long brown hair and a red scarf.",
        "She wears no earrings."], "provenance": ["generated"] * 3, "clip_tokens": [10, 12, 6], "flags": []},
        {"key": k1, "status": "ok", "error": "", "_fp": "old", "captions": [
            "A woman with long brown hair and glasses.", "A young woman with long brown hair, smiling."],
         "provenance": ["generated"] * 2, "clip_tokens": [10, 10], "flags": []}]
    schema = pa.schema([("key", pa.string()), ("status", pa.string()), ("error", pa.string()), ("_fp", pa.string()),
                        ("captions", pa.list_(pa.string())), ("provenance", pa.list_(pa.string())),
                        ("clip_tokens", pa.list_(pa.int32())), ("flags", pa.list_(pa.string()))])
    Ledger(out, "captions/final").write(pa.Table.from_pylist(rows, schema=schema))  # v1: no audit column
    r = invoke("audit-captions", str(out))
    assert r.exit_code == 0, r.output
    assert "next: open" in r.output
    v = pq.read_table(out / "captions" / "audit" / "verdicts.parquet").to_pylist()
    got = {(x["id"], x["index"]): x["verdict"] for x in v}
    assert got == {(k0, 0): "accepted", (k0, 1): "invented_fact", (k0, 2): "mask_contradiction",
                   (k1, 0): "inconsistent", (k1, 1): "accepted"}
    summary = json.loads((out / "captions" / "audit" / "summary.json").read_text())
    assert summary["verdicts"] == {"accepted": 2, "inconsistent": 1, "invented_fact": 1, "mask_contradiction": 1}
    page = (out / "captions" / "audit" / "report.html").read_text()
    assert "parsers_agree" in page and "a red scarf" in page and page.count("<div class=img ") == 2


def test_a_caption_folder_is_judged_leave_one_out_and_bad_files_become_rows(tmp_path):
    caps, masks = tmp_path / "celeba-caption", tmp_path / "masks"
    caps.mkdir()
    masks.mkdir()
    (caps / "0.txt").write_text("The woman has long blond hair and wears earrings.\n"
                                "This woman has blond hair and earrings.\n"
                                "She has long hair and no earrings.\n"
                                "The person is a man with blond hair.\n")
    label = np.zeros((64, 64), np.uint8)
    label[10:12, 10:14] = 15  # earrings in the ground truth
    Image.fromarray(label).save(masks / "0.png")
    (caps / "1.txt").write_bytes(b"\xff\xfe\x00bad")
    (caps / "2.txt").write_text("\n\n")
    (caps / "<b>3.txt").write_text("A man with a beard.\nHe has a beard and glasses.\nA clean-shaven man.\nA bearded man.\n")
    (tmp_path / "secret.txt").write_text("TOPSECRET contents")
    os.symlink(tmp_path / "secret.txt", caps / "4.txt")
    r = invoke("audit-captions", str(caps), "--masks", str(masks), "--out", str(tmp_path / "audit"))
    assert r.exit_code == 0, r.output
    v = pq.read_table(tmp_path / "audit" / "verdicts.parquet").to_pylist()
    zero = [x["verdict"] for x in v if x["id"] == "0"]
    assert zero == ["accepted", "accepted", "mask_contradiction", "inconsistent"]
    status = {x["id"]: x["status"] for x in v if x["status"] != "ok"}
    assert status == {"1": "not_utf8", "2": "empty", "4": "link_outside_folder"}
    three = [x for x in v if x["id"] == "<b>3"]
    # glasses: only one caption sees them; clean-shaven: the other two have a beard
    assert [x["verdict"] for x in three] == ["accepted", "unique_fact", "inconsistent", "accepted"]
    page = (tmp_path / "audit" / "report.html").read_text()
    assert "<b>3" not in page and "&lt;b&gt;3" in page and "TOPSECRET" not in page
    assert "3 files not readable" in " ".join(r.output.split())


@pytest.mark.parametrize("args, message", [
    (["nowhere"], "not a folder"),
    (["EMPTY"], "no .txt files"),
])
def test_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "EMPTY").mkdir()
    proc = subprocess.run([sys.executable, "-m", "pipeline", "audit-captions", *[str(tmp_path / a) for a in args]],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2
