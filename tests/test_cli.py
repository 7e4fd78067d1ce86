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
