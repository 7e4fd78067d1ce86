"""Ledger: atomic parts, latest-part-wins resolution, done sets, compaction, stale temporaries."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 (pa.parquet)
import pytest

from pipeline.core import ledger as ledger_mod
from pipeline.core.ledger import BASE_SCHEMA, DigestIndex, Ledger, part_sha


def part(rows: list[tuple[str, str, str]]) -> pa.Table:
    keys, status, fps = zip(*rows, strict=True)
    return pa.table({"key": list(keys), "status": list(status), "error": [""] * len(rows), "_fp": list(fps)},
                    schema=BASE_SCHEMA)


def done(led: Ledger) -> dict:
    return {r["key"]: (r["_fp"], r["n_ok"], r["n"]) for r in led.done().to_pylist()}


def test_latest_part_wins_per_key_and_keeps_multi_row_keys(tmp_path):
    led = Ledger(tmp_path, "captions/raw")
    led.write(part([("a", "ok", "f1"), ("a", "ok", "f1"), ("b", "decode_error", "f1")]))
    led.write(part([("b", "ok", "f2")]))
    t = led.read()
    assert sorted(zip(t["key"].to_pylist(), t["status"].to_pylist(), strict=True)) == [
        ("a", "ok"), ("a", "ok"), ("b", "ok")]
    assert done(led) == {"a": ("f1", 2, 2), "b": ("f2", 1, 1)}
    looked = led.lookup(pa.array(["b", "zz", "a"])).to_pylist()
    assert [r["key"] for r in looked] == ["b", None, "a"] and looked[2]["n"] == 2
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


def test_compaction_in_bounded_pieces_keeps_every_key_whole_and_resolves_the_same(tmp_path):
    led = Ledger(tmp_path, "s")
    for i in range(6):  # keys k0..k9, three rows each, rewritten by later parts
        led.write(part([(f"k{j}", "ok", f"v{i}") for j in range(i, i + 5) for _ in range(3)]))
    led.write(BASE_SCHEMA.empty_table())
    before = sorted(led.read().to_pylist(), key=lambda r: (r["key"], r["_fp"]))
    led.compact(rows_per_part=7)
    parts = led.parts()
    assert len(parts) > 1
    owners = {}
    for _, p in parts:
        for k in set(pa.parquet.read_table(p)["key"].to_pylist()):
            assert k not in owners, "a key's rows were split across parts"
            owners[k] = p
    assert sorted(led.read().to_pylist(), key=lambda r: (r["key"], r["_fp"])) == before
    assert done(led)["k0"] == ("v0", 3, 3) and done(led)["k9"] == ("v5", 3, 3)


def test_owners_and_iter_resolved_give_reads_rows_one_part_at_a_time(tmp_path):
    led = Ledger(tmp_path, "s")
    led.write(part([("a", "ok", "1"), ("a", "ok", "1"), ("b", "bad", "1")]))
    led.write(part([("b", "ok", "2"), ("c", "ok", "2")]))
    assert sorted(led.owners().to_pylist(), key=lambda r: r["key"]) == [
        {"key": "a", "_part": 0}, {"key": "b", "_part": 1}, {"key": "c", "_part": 1}]
    pieces = list(led.iter_resolved(["status", "_fp"]))
    assert [seq for seq, _ in pieces] == [0, 1]
    assert pieces[0][1]["key"].to_pylist() == ["a", "a"]  # b's old row is not the resolved one
    flat = sorted(r for _, t in pieces for r in zip(t["key"].to_pylist(), t["_fp"].to_pylist(), strict=True))
    assert flat == sorted(zip(led.read()["key"].to_pylist(), led.read()["_fp"].to_pylist(), strict=True))


def test_batch_rows_reads_only_the_row_groups_of_a_batch_from_a_compacted_part(tmp_path, monkeypatch):
    import pipeline.core.ledger as ledger_mod
    from pipeline.core.ledger import BatchRows

    monkeypatch.setattr(ledger_mod, "PART_ROW_GROUP", 10)
    led = Ledger(tmp_path, "s")
    for i in range(4):  # 40 keys written in a shuffled order, two rows each; key k07 rewritten last
        led.write(part([(f"k{j:02d}", "ok", f"{i}.{j}") for j in range(39 - i, -1, -4) for _ in range(2)]))
    led.write(part([("k07", "ok", "new"), ("k07", "bad", "new")]))
    led.compact()
    (seq, path), = led.parts()
    f = pa.parquet.ParquetFile(path)
    assert f.metadata.num_row_groups == 8  # 80 rows, key-sorted, 10 a group
    reader = BatchRows(tmp_path, "s", ["status", "_fp"])
    read = []
    monkeypatch.setattr(pa.parquet.ParquetFile, "read_row_groups",
                        lambda self, ids, **kw: _read_groups(self, ids, kw, read))
    got = reader.rows(["k07", "k06"], [seq, seq])
    assert got["k07"] == [{"key": "k07", "status": "ok", "_fp": "new"}, {"key": "k07", "status": "bad", "_fp": "new"}]
    assert [r["_fp"] for r in got["k06"]] == ["1.6", "1.6"]
    assert read == [[1]]  # k06 and k07 share one group of ten rows (k05..k09)
    reader.rows(["k08"], [seq])
    assert read == [[1]]  # the same groups again: kept from the last read
    with pytest.raises(ValueError, match="no longer holds 'zz'"):
        reader.rows(["zz"], [seq])
    with pytest.raises(ValueError, match="part 9 is gone"):
        reader.rows(["k01"], [9])


_REAL_READ_GROUPS = pa.parquet.ParquetFile.read_row_groups


def _read_groups(self, ids, kw, log):
    log.append(list(ids))
    return _REAL_READ_GROUPS(self, ids, **kw)


def test_only_empty_parts_compact_to_one_empty_part(tmp_path):
    led = Ledger(tmp_path, "s")
    led.write(BASE_SCHEMA.empty_table())
    led.write(BASE_SCHEMA.empty_table())
    led.compact()
    assert len(led.parts()) == 1 and led.read().num_rows == 0


def test_part_numbers_follow_a_folder_changed_behind_the_ledgers_back(tmp_path):
    a, b = Ledger(tmp_path, "s"), Ledger(tmp_path, "s")
    a.write(part([("x", "ok", "1")]))
    b.write(part([("x", "ok", "2")]))  # another writer: a's remembered number is stale
    a.write(part([("x", "ok", "3")]))
    assert [seq for seq, _ in a.parts()] == [0, 1, 2]
    assert done(a)["x"][0] == "3"


def test_stale_temporaries_are_removed_and_never_read(tmp_path):
    led = Ledger(tmp_path, "s")
    led.write(part([("a", "ok", "1")]))
    (led.dir / ".part-000001.parquet.tmp-123").write_bytes(b"half a parquet file")
    assert led.read().num_rows == 1
    assert led.remove_stale() == 1
    assert [p.name[:12] for p in led.dir.iterdir()] == ["part-000000."]


def test_empty_ledger_reads_empty(tmp_path):
    led = Ledger(tmp_path, "nothing")
    assert led.read().num_rows == 0 and done(led) == {} and led.counts() == {}


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


def test_rows_by_key_yields_each_keys_rows_in_order_one_chunk_at_a_time():
    from pipeline.core.ledger import rows_by_key, string_table

    t = pa.table({"key": ["b", "a", "b", "c", "a"], "v": [1, 2, 3, 4, 5]})
    got = [(k, [r["v"] for r in rows]) for k, rows in rows_by_key(t, pa.array(["c", "zz", "a", "b"]), chunk=2)]
    assert got == [("c", [4]), ("a", [2, 5]), ("b", [1, 3])]  # the keys' order, rows as written
    ordered = t.take(pa.array([1, 4, 0, 2, 3]))  # already sorted by key: read as it is
    assert [(k, [r["v"] for r in rows]) for k, rows in rows_by_key(ordered, pa.array(["c", "a", "b"]))] == got
    table = string_table(((k, str(len(r))) for k, r in rows_by_key(t, pa.array(["a", "b", "c"]), chunk=1)),
                         ("key", "n"), chunk=2)
    assert table.to_pylist() == [{"key": "a", "n": "2"}, {"key": "b", "n": "2"}, {"key": "c", "n": "1"}]
    assert string_table(iter(()), ("key",)).num_rows == 0


def caption_rows(key: str, texts: list[str], status: str = "ok") -> pa.Table:
    n = len(texts)
    return pa.table({"key": [key] * n, "status": [status] * n, "error": [""] * n, "_fp": ["f"] * n,
                     "cache_key": [f"{key}:{t}" for t in texts], "text": texts})


@pytest.mark.parametrize("collide", [False, True])
def test_digest_index_finds_the_current_ok_row_by_its_whole_digest(tmp_path, monkeypatch, collide):
    if collide:  # every digest hashes alike: only the whole-digest comparison tells rows apart
        monkeypatch.setattr(ledger_mod, "hash64", lambda v: np.zeros(len(v), np.uint64))
    led = Ledger(tmp_path, "captions/raw")
    led.write(caption_rows("a", ["one", "two"]))
    led.write(caption_rows("b", ["old"]))
    led.write(caption_rows("b", ["new", "bad"]).set_column(1, "status", pa.array(["ok", "engine_error"])))
    led.write(caption_rows("c", ["x"], status="decode_error"))
    index = DigestIndex(tmp_path, "captions/raw", "cache_key", ["text"])
    assert len(index) == 3  # a:one, a:two, b:new (b:old is superseded, failures are never hits)
    got = index.get(["b:new", "a:two", "b:old", "b:bad", "c:x", "zzz", "a:one"])
    assert [None if g is None else g["text"] for g in got] == ["new", "two", None, None, None, None, "one"]
    assert index.hashes.nbytes + index.owner.nbytes == 12 * len(index)  # no Python object per row
    assert DigestIndex(tmp_path, "nothing/here", "cache_key", ["text"]).get(["a:one"]) == [None]
