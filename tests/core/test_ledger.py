"""Ledger: atomic parts, latest-part-wins resolution, done sets, compaction, stale temporaries."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.core.ledger import BASE_SCHEMA, Ledger, part_sha


def part(rows: list[tuple[str, str, str]]) -> pa.Table:
    keys, status, fps = zip(*rows, strict=True)
    return pa.table({"key": list(keys), "status": list(status), "error": [""] * len(rows), "_fp": list(fps)},
                    schema=BASE_SCHEMA)


def test_latest_part_wins_per_key_and_keeps_multi_row_keys(tmp_path):
    led = Ledger(tmp_path, "captions/raw")
    led.write(part([("a", "ok", "f1"), ("a", "ok", "f1"), ("b", "decode_error", "f1")]))
    led.write(part([("b", "ok", "f2")]))
    t = led.read()
    assert sorted(zip(t["key"].to_pylist(), t["status"].to_pylist(), strict=True)) == [
        ("a", "ok"), ("a", "ok"), ("b", "ok")]
    assert led.done() == {"a": ("f1", 2, 2), "b": ("f2", 1, 1)}
    assert led.counts() == {"ok": 3}
    assert led.ok_keys() == {"a", "b"}


def test_compact_folds_parts_into_the_resolved_view(tmp_path):
    led = Ledger(tmp_path, "s")
    led.write(part([("a", "ok", "1"), ("b", "bad", "1")]))
    led.write(part([("b", "ok", "2")]))
    before = sorted(led.read().to_pylist(), key=lambda r: r["key"])
    led.compact()
    assert len(led.parts()) == 1
    assert sorted(led.read().to_pylist(), key=lambda r: r["key"]) == before


def test_stale_temporaries_are_removed_and_never_read(tmp_path):
    led = Ledger(tmp_path, "s")
    led.write(part([("a", "ok", "1")]))
    (led.dir / ".part-000001.parquet.tmp-123").write_bytes(b"half a parquet file")
    assert led.read().num_rows == 1
    assert led.remove_stale() == 1
    assert [p.name[:12] for p in led.dir.iterdir()] == ["part-000000."]


def test_empty_ledger_reads_empty(tmp_path):
    led = Ledger(tmp_path, "nothing")
    assert led.read().num_rows == 0 and led.done() == {} and led.counts() == {}


def test_parts_with_evolved_schema_still_concatenate(tmp_path):
    led = Ledger(tmp_path, "s")
    led.write(part([("a", "ok", "1")]))
    led.write(part([("b", "ok", "1")]).append_column("extra", pa.array([3])))
    t = led.read()
    assert t.num_rows == 2 and t["extra"].to_pylist() == [None, 3]


@pytest.mark.parametrize("seq", [0, 7])
def test_part_names_are_sequential(tmp_path, seq):
    led = Ledger(tmp_path, "s")
    led.dir.mkdir(parents=True)
    (led.dir / f"part-{seq:06d}.parquet").write_bytes(b"")  # only the name matters for numbering
    name = led.write(part([("a", "ok", "1")])).name
    assert name.startswith(f"part-{seq + 1:06d}.") and part_sha(led.dir / name) is not None
