"""The offline demo chain on vLLM: ingest -> caption -> clean -> refine, with `--engine vllm`, as a user runs it.

Each step is the `facecurate` command of the environment this script runs in (`.venv-vllm`), in its own
process, on the demo photos and the tiny models. Then it checks what a user would: a caption row for
every prompt of every image, refine's answers parsed as JSON (never `fallback:unparseable`), vLLM's
counters in the summary (each image encoded once for its ten prompts), and a rerun of caption that
generates nothing. Exit 1 with the reason when a check fails.

    .venv-vllm/bin/python tools/vllm_env/demo_chain.py --out .cache/vllm-demo    # what `make test-vllm` runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def step(args: list[str]) -> str:
    cli = Path(sys.executable).with_name("facecurate")
    t0 = time.perf_counter()
    proc = subprocess.run([str(cli), *args], capture_output=True, text=True, cwd=ROOT)
    print(f"$ facecurate {' '.join(args)}   ({time.perf_counter() - t0:.0f} s)", flush=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"facecurate {args[0]} failed (exit {proc.returncode})")
    return proc.stdout + proc.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".cache" / "vllm-demo")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache")
    args = ap.parse_args()
    from pipeline.core.ledger import Ledger
    from pipeline.core.stage import StageContext

    shutil.rmtree(args.out, ignore_errors=True)
    photos = args.cache / "demo" / "photos"
    models = args.cache / "tiny-models"
    out = str(args.out)
    step(["ingest", str(photos), "--out", out])
    log = step(["caption", out, "--model", str(models / "internvl3"), "--engine", "vllm"])
    step(["clean", out])
    step(["refine", out, "--model", str(models / "qwen3"), "--engine", "vllm", "--max-new-tokens", "1200",
          "--set", "num_captions=3", "--max-retries", "1"])

    ok = StageContext(args.out).index(["key"]).num_rows
    raw = Ledger(args.out, "captions/raw").read(["key", "status"])
    final = Ledger(args.out, "captions/final").read(["key", "status", "flags"]).to_pylist()
    stats = json.loads((args.out / "captions" / "engine_stats.json").read_text())
    problems = []
    if raw.num_rows != 10 * ok:
        problems.append(f"{raw.num_rows} caption rows for {ok} images x 10 prompts")
    if len(final) != ok:
        problems.append(f"{len(final)} refine rows for {ok} images")
    unparsed = [r["key"] for r in final if "fallback:unparseable" in (r["flags"] or [])]
    if unparsed:
        problems.append(f"refine fell back for {len(unparsed)} image(s): {unparsed[:3]}")
    if stats.get("images_encoded_per_image") != 1.0:
        problems.append(f"images encoded per image: {stats.get('images_encoded_per_image')}, expected 1.0")
    if "prefix-cache hit rate" not in log:
        problems.append("the caption summary does not report vLLM's prefix-cache hit rate")
    again = step(["caption", out, "--model", str(models / "internvl3"), "--engine", "vllm"])
    if "vllm:" in again:  # a run that generated would report vLLM's counters again
        problems.append("the caption rerun generated captions")
    print(f"{ok} images: {raw.num_rows} caption rows, {len(final)} refined; "
          f"vLLM prefix-cache hit rate {100 * stats['prefix_cache_hit_rate']:.1f}%, "
          f"{stats['images_encoded']} images encoded for {stats['images_submitted']} submitted")
    if problems:
        print("FAILED: " + "; ".join(problems))
        return 1
    print("ok: the demo chain runs on vLLM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
