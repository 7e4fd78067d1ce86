"""tools/bench_train.py runs on CPU and reports the table the README quotes."""

from __future__ import annotations

import json

from tools import bench_train


def test_bench_tiny_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_train.main(["--size", "tiny", "--res", "64", "--batch", "2", "--steps", "1", "--warmup", "1",
                             "--attn", "math", "--grad-ckpt", "both", "--device", "cpu", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "samples/s" in printed and "MFU" in printed and "tiny 64px attn=math ckpt=on" in printed
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 and all(r["samples_per_s"] > 0 and r["tflops"] > 0 for r in rows)
