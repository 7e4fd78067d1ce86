"""Manifests: strict loading, one-line errors that name the key, overrides, path resolution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import ConfigError, fingerprint
from pipeline.core.manifest import load_manifest


def write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def good(tmp_path: Path) -> dict:
    (tmp_path / "photos").mkdir(exist_ok=True)
    return {"name": "t", "out": "out", "stages": {"ingest": {"sources": [{"path": "photos"}]}}}


def test_relative_paths_resolve_against_the_manifest_folder(tmp_path):
    m = load_manifest(write(tmp_path, good(tmp_path)))
    assert m.out == tmp_path / "out"
    assert m.stages["ingest"].sources[0].path == tmp_path / "photos"


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda d: d["stages"]["ingest"].update(min_sise=3),
     "stages.ingest.min_sise: unknown key (did you mean 'min_size'?); valid keys:"),
    (lambda d: d["stages"]["ingest"].update(min_size="big"), "stages.ingest.min_size: expected an integer, got 'big'"),
    (lambda d: d["stages"]["ingest"]["sources"][0].update(path="nope"), "stages.ingest.sources[0].path:"),
    (lambda d: d["stages"]["ingest"]["sources"][0].update(type="foldr"),
     "stages.ingest.sources[0].type: 'foldr' is not a valid choice (did you mean 'folder'?); choose one of auto, folder"),
    (lambda d: d["stages"].update(captoin={}), "stages.captoin: unknown stage"),
    (lambda d: d["runner"].update(kind="spark") if "runner" in d else d.update(runner={"kind": "spark"}),
     "runner.kind: 'spark' is not a valid choice; choose one of local, ray"),
    (lambda d: d["stages"]["ingest"].update(val_fraction=1.5), "stages.ingest: val_fraction and test_fraction"),
])
def test_bad_manifests_raise_one_line_errors_naming_the_key(tmp_path, mutate, expected):
    data = good(tmp_path)
    mutate(data)
    with pytest.raises(ConfigError) as err:
        load_manifest(write(tmp_path, data))
    msg = str(err.value)
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_missing_folder_error_names_the_resolved_path(tmp_path):
    data = good(tmp_path)
    data["stages"]["ingest"]["sources"][0]["path"] = "../missing_photos"
    with pytest.raises(ConfigError, match=r"sources\[0\]\.path: .*/missing_photos does not exist"):
        load_manifest(write(tmp_path, data))


def test_overrides_apply_before_validation(tmp_path):
    m = load_manifest(write(tmp_path, good(tmp_path)), ["stages.ingest.min_size=128", "runner.kind=ray"])
    assert m.stages["ingest"].min_size == 128 and m.runner.kind == "ray"
    with pytest.raises(ConfigError, match="stages.ingest.min_size: expected an integer"):
        load_manifest(write(tmp_path, good(tmp_path)), ["stages.ingest.min_size=huge"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_manifest(write(tmp_path, good(tmp_path)), ["stages.ingest.min_size"])


def test_invalid_yaml_is_one_line(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("stages:\n  ingest: [unclosed\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_manifest(p)


def test_fingerprint_ignores_volatile_fields(tmp_path):
    a = load_manifest(write(tmp_path, good(tmp_path))).stages["ingest"]
    b = load_manifest(write(tmp_path, good(tmp_path)), ["stages.ingest.batch_size=7"]).stages["ingest"]
    c = load_manifest(write(tmp_path, good(tmp_path)), ["stages.ingest.min_size=7"]).stages["ingest"]
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    data = good(tmp_path)
    data["stages"]["ingest"]["bogus"] = 1
    proc = subprocess.run([sys.executable, "-m", "pipeline", "run", str(write(tmp_path, data))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: stages.ingest.bogus: unknown key"), proc.stderr
