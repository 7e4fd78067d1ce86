"""`facecurate shard` as a new user meets it: nothing upstream stops with the commands to run, images only
when asked, a partial run shards with a note naming what is missing, and the next step after a shard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.cli import run_cli
from pipeline.core.ledger import Ledger
from pipeline.stages.shard import next_step
from tests.shard_helpers import copy_run, ingest, write_upstream


@pytest.fixture(scope="module")
def ingested(demo_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("guidance") / "ingested"
    ingest(demo_data, out)
    return out


def cli(capsys, *args) -> tuple[int, str, str]:
    """`facecurate ARGS` in this process, through the console script's error handler."""
    code = run_cli([str(a) for a in args])
    got = capsys.readouterr()
    return code, got.out, got.err


def test_nothing_upstream_stops_with_one_line_naming_the_stages_and_commands(ingested, tmp_path, capsys):
    out = copy_run(ingested, tmp_path / "run")
    code, shown, err = cli(capsys, "shard", out)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    line = lines[0]
    assert line.startswith(f"error: shard: refine, parse, sketch and latents have not run on {out}")
    assert "no captions, masks, sketches or latents" in line  # the demo's ground truth covers only a few
    assert "`facecurate run MANIFEST`" in line and f"`facecurate caption {out} && facecurate clean {out} && " \
        f"facecurate refine {out} && facecurate parse {out} && facecurate sketch {out} && facecurate latents {out}`" in line
    assert f"`facecurate shard {out} --set allow_images_only=true`" in line
    assert not (out / "shards" / "index.json").exists() and not Ledger(out, "shards").parts()
    code, shown, err = cli(capsys, "status", out)  # status computes the shard's inputs too: it neither stops
    assert code == 0 and "note: shard" not in err, err


def test_images_only_when_asked_shards_and_says_what_is_missing(ingested, tmp_path, capsys):
    out = copy_run(ingested, tmp_path / "run")
    code, shown, err = cli(capsys, "shard", out, "--set", "allow_images_only=true")
    assert code == 0, err
    assert (out / "shards" / "index.json").is_file() and "shards in" in shown
    notes = [line for line in err.splitlines() if line.startswith("note: shard:")]
    assert len(notes) == 1 and f"no latents: run `facecurate latents {out}`" in notes[0]
    assert "(ground truth for only " in notes[0] and f"no sketches: run `facecurate sketch {out}`" in notes[0]
    assert "allow_images_only: true" in (out / "manifest.resolved.yaml").read_text()  # kept for the next run
    assert next_step(out) == (f"next: `facecurate verify {out}`, then `facecurate publish {out} DIR` to share it, "
                              f"or to train, first `facecurate latents {out}`, then `facecurate shard {out}` again")


def test_partial_upstream_shards_with_a_note_for_each_missing_field(ingested, tmp_path, capsys):
    out = copy_run(ingested, tmp_path / "run")
    write_upstream(out)  # parse, sketches and captions/final; no latents
    code, shown, err = cli(capsys, "shard", out)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: shard: no latents: run `facecurate latents {out}`; then `facecurate shard {out}` again"]
    assert (out / "shards" / "index.json").is_file()
    shutil.rmtree(out / "captions" / "final")  # caption ran but neither clean nor refine: those two are named
    Ledger(out, "captions/raw").write(pa.table({"key": ["k"], "status": ["ok"], "error": [""], "_fp": ["f"]}))
    code, shown, err = cli(capsys, "shard", out)
    note = next(line for line in err.splitlines() if line.startswith("note:"))
    assert code == 0 and note.startswith(f"note: shard: no captions: run `facecurate clean {out} && "
                                         f"facecurate refine {out}`; no latents"), err
