"""`effective_index`: the index every stage after `faces` reads (one row per kept face), built with Arrow
lookups. Checked against the per-row rule written out in Python, on rows with every awkward case."""

from __future__ import annotations

import random

import pyarrow as pa

from pipeline.core.stage import effective_index

INDEX_SCHEMA = pa.schema([("key", pa.string()), ("status", pa.string()), ("path", pa.string()),
                          ("sha256", pa.string()), ("width", pa.int64()), ("height", pa.int64()),
                          ("split", pa.string()), ("license", pa.string())])
FACES_SCHEMA = pa.schema([("key", pa.string()), ("status", pa.string()), ("face_key", pa.string()),
                          ("aligned", pa.string()), ("aligned_sha256", pa.string()), ("size", pa.int64()),
                          ("split", pa.string())])


def by_rule(index: pa.Table, faces: pa.Table) -> list[dict]:
    """The rule, one row at a time: a kept face of a photo in the index, with an aligned crop."""
    rows = {r["key"]: r for r in index.to_pylist()}
    out = []
    for f in faces.to_pylist():
        base = rows.get(f["key"])
        if f["status"] != "ok" or base is None or not f["aligned"]:
            continue
        row = {**base, "key": f["face_key"], "path": f["aligned"], "photo_key": f["key"]}
        if f["aligned_sha256"]:
            row.update(sha256=f["aligned_sha256"], width=f["size"], height=f["size"])
        if f["split"]:
            row["split"] = f["split"]
        out.append(row)
    return sorted(out, key=lambda r: r["key"])


def test_hand_made_case():
    index = pa.Table.from_pylist([
        {"key": "p/a", "status": "ok", "path": "a.jpg", "sha256": "A", "width": 900, "height": 700,
         "split": "train", "license": "cc0"},
        {"key": "p/b", "status": "ok", "path": "b.jpg", "sha256": "B", "width": 50, "height": 50,
         "split": "train", "license": None}], schema=INDEX_SCHEMA)
    faces = pa.Table.from_pylist([
        {"key": "p/a", "status": "ok", "face_key": "p/a#1", "aligned": "faces/a1.png", "aligned_sha256": "A1",
         "size": 512, "split": "test"},
        {"key": "p/a", "status": "ok", "face_key": "p/a#0", "aligned": "faces/a0.png", "aligned_sha256": "",
         "size": 512, "split": None},
        {"key": "p/b", "status": "no_face", "face_key": "p/b#0", "aligned": None, "aligned_sha256": None,
         "size": None, "split": None},
        {"key": "p/gone", "status": "ok", "face_key": "p/gone#0", "aligned": "faces/g.png",
         "aligned_sha256": "G", "size": 512, "split": "val"}], schema=FACES_SCHEMA)
    got = effective_index(index, faces)
    assert got.schema == INDEX_SCHEMA.append(pa.field("photo_key", pa.string()))
    assert got.to_pylist() == [
        {"key": "p/a#0", "status": "ok", "path": "faces/a0.png", "sha256": "A", "width": 900, "height": 700,
         "split": "train", "license": "cc0", "photo_key": "p/a"},  # no crop hash: the photo's own stay
        {"key": "p/a#1", "status": "ok", "path": "faces/a1.png", "sha256": "A1", "width": 512, "height": 512,
         "split": "test", "license": "cc0", "photo_key": "p/a"}]


def test_matches_the_rule_on_random_rows():
    rng = random.Random(7)
    pick = rng.choice
    for _ in range(30):
        photos = [f"src/ü{i:03d}" for i in rng.sample(range(200), rng.randint(0, 40))]
        index = pa.Table.from_pylist([
            {"key": k, "status": "ok", "path": f"{k}.jpg", "sha256": pick([k[-3:], None]),
             "width": pick([10, None]), "height": 20, "split": pick(["train", "val", None]),
             "license": pick(["cc0", None])} for k in photos], schema=INDEX_SCHEMA)
        faces = pa.Table.from_pylist([
            {"key": pick(photos + ["src/elsewhere"]), "status": pick(["ok", "ok", "no_face", "small"]),
             "face_key": f"f{j:04d}-{rng.random():.6f}", "aligned": pick(["c.png", "", None]),
             "aligned_sha256": pick(["h", "", None]), "size": pick([512, None]),
             "split": pick(["test", "", None])} for j in range(rng.randint(0, 60))] if photos else [],
            schema=FACES_SCHEMA)
        assert effective_index(index, faces).to_pylist() == by_rule(index, faces)
