"""The command line as a user meets it: help with examples, ingest, status, verify, inspect, locking."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.core.config import ConfigError
from pipeline.core.run import locked

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize("command", [[], ["ingest"], ["run"], ["status"], ["verify"], ["repair"], ["inspect"]])
def test_help_teaches_with_examples(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Examples" in result.output or "Example" in result.output
    assert "facecurate " in result.output


def test_ingest_status_verify_inspect(demo_data, tmp_path):
    photos = tmp_path / "photos"
    shutil.copytree(demo_data / "photos", photos, symlinks=True)
    out = tmp_path / "out"
    result = invoke("ingest", str(photos), "--out", str(out))
    assert result.exit_code == 0
    assert "ingest" in result.output and "duplicate 2" in result.output
    status = invoke("status", str(out))
    assert status.exit_code == 0 and "decode_error 1" in status.output
    assert invoke("verify", str(out)).exit_code == 0
    (photos / "astronaut.png").write_bytes((photos / "grace_hopper.jpg").read_bytes())  # changed under us
    bad = invoke("verify", str(out))
    assert bad.exit_code == 1 and "photos/astronaut: " in bad.output and "changed since ingest" in bad.output
    assert "pending" in invoke("status", str(out)).output
    again = invoke("ingest", str(photos), "--out", str(out))
    assert again.exit_code == 0 and "2 item(s) processed" in again.output  # the file and a symlink to it
    assert invoke("verify", str(out)).exit_code == 0
    shown = invoke("inspect", str(out), "photos/bad/truncated")
    assert "truncated" in shown.output and "end-of-image marker" in shown.output
    listed = invoke("inspect", str(out), "--status", "duplicate")
    assert "photos/bad/same_astronaut" in listed.output


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    with locked(tmp_path), pytest.raises(ConfigError, match="in use by another facecurate run"), locked(tmp_path):
        pass


def test_user_errors_exit_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "status", str(tmp_path / "nothing")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pipeline", "ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_status_says_blocked_with_the_reason_and_the_next_command(tmp_path):
    from pipeline.core.run import _mark_blocked, next_step, summary_table

    def row(stage, pending, ran=True):
        return {"stage": stage, "ok": 0, "failed": {}, "pending": pending, "notes": [], "ran": ran}

    rows = [row("ingest", 0), row("caption", 3), row("clean", 0, ran=False), row("refine", 0, ran=False),
            row("sketch", 0)]
    _mark_blocked(rows)
    by = {r["stage"]: r["blocked"] for r in rows}
    assert by == {"ingest": None, "caption": None, "clean": "caption has 3 pending",
                  "refine": "clean has not run", "sketch": None}  # parse is not in this run: not waited for
    assert next_step(rows, tmp_path).endswith(f"facecurate caption {tmp_path} for caption alone")
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(summary_table(rows, "status"))
    text = console.export_text()
    assert "0 blocked: caption has 3 pending" in text and "0 blocked: clean has not run" in text
    done = [row("ingest", 0), row("caption", 0)]
    _mark_blocked(done)
    assert "everything in the manifest is done" in next_step(done, tmp_path)


def test_a_runs_record_reruns_as_its_manifest(tmp_path):
    from pipeline.core.manifest import build_manifest, load_manifest
    from pipeline.core.run import RESOLVED, write_resolved

    (tmp_path / "photos").mkdir()
    m = build_manifest({"name": "mine", "stages": {"ingest": {"sources": [{"path": str(tmp_path / "photos")}]},
                                                    "clean": {"budget": 60}}}, None)
    write_resolved(m, tmp_path)
    again = load_manifest(tmp_path / RESOLVED)
    assert again.name == "mine" and again.stages["clean"].budget == 60 and again.out == tmp_path
    assert again.stages["ingest"].sources[0].path == tmp_path / "photos"
