"""Faces throughput: the faces stage against a plain loop over the same dlib calls, side by side.

Both do, per photo: decode, dlib's HOG detector (upsampling 1, on a copy at most 1024 px), the 68-point
landmarks, the FFHQ alignment (`pipeline.models.dlib_faces.ffhq_align`, the same function), dlib's
128-d descriptor, and a PNG of the crop written to disk. The stage adds what makes it a stage: the
quality measures (sharpness, yaw, padding), the perceptual hashes, the ledger, progress, and finalize
(identity clustering and the report). One thread (dlib runs on one core here), so the figure is per core.

    .venv/bin/python tools/bench_faces.py --images 40 --size 512
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def photos(n: int, folder: Path) -> list[Path]:
    """`n` distinct 1024 px portraits: crops and flips of the astronaut and Grace Hopper photographs."""
    from matplotlib import cbook
    from PIL import Image, ImageOps
    from skimage import data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        bases = [Image.fromarray(data.astronaut()), Image.open(f).convert("RGB").resize((512, 512))]
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        d = 3 * (i % 12)
        img = bases[i % 2].crop((d, d // 2, 512 - d // 2, 512 - d)).resize((1024, 1024), Image.Resampling.BICUBIC)
        img = ImageOps.mirror(img) if (i // 12) % 2 else img
        p = folder / f"p{i:04d}.png"
        img.save(p)
        out.append(p)
    return out


def plain_loop(paths: list[Path], size: int, dest: Path) -> float:
    import dlib
    import numpy as np

    from pipeline.data.images import load_rgb
    from pipeline.models.dlib_faces import FILES, ffhq_align, models_folder

    folder = models_folder()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(folder / FILES["landmarks68"]))
    encoder = dlib.face_recognition_model_v1(str(folder / FILES["descriptor"]))
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for p in paths:
        img = load_rgb(p)
        rgb = np.asarray(img)
        scale = min(1.0, 1024 / max(img.size))
        small = rgb if scale == 1 else np.asarray(img.resize((round(img.size[0] * scale), round(img.size[1] * scale))))
        rects = detector(small, 1)
        if not rects:
            continue
        shape = predictor(small, rects[0])
        lm = np.array([[q.x, q.y] for q in shape.parts()], np.float64) / scale
        crop, _ = ffhq_align(img, lm, size, transform_size=min(4096, 2 * size))
        rect = dlib.rectangle(*[int(v) for v in (*lm.min(0), *lm.max(0))])
        full = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in lm])
        np.asarray(encoder.compute_face_descriptor(rgb, full))
        crop.save(dest / f"{p.stem}.png")
    return time.perf_counter() - t0


def stage_run(paths: list[Path], size: int, out: Path) -> float:
    from rich.console import Console

    from pipeline.core.config import RunnerConfig, from_dict
    from pipeline.core.manifest import build_manifest
    from pipeline.core.runner import run_stage
    from pipeline.core.stage import StageContext
    from pipeline.stages.faces import FacesConfig

    quiet = Console(quiet=True)
    manifest = build_manifest({"stages": {"ingest": {"sources": [{"path": str(paths[0].parent), "name": "p"}]}}}, None)
    run_stage("ingest", manifest.stages["ingest"], StageContext(out), RunnerConfig(), quiet)
    cfg = from_dict(FacesConfig, {"size": size, "min_score": 0.0}, "stages.faces")
    t0 = time.perf_counter()
    run_stage("faces", cfg, StageContext(out), RunnerConfig(), quiet)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--size", type=int, default=512, help="aligned crop side (FFHQ: 1024)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_faces_"))
    try:
        paths = photos(args.images, tmp / "photos")
        loop = min(plain_loop(paths, args.size, tmp / f"loop{i}") for i in range(2))
        stage = min(stage_run(paths, args.size, tmp / f"run{i}") for i in range(2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n = args.images
    print(f"{n} photos of 1024 px, aligned to {args.size} px, one core")
    print(f"{'':<34}{'faces/s':>10}{'s/face':>10}")
    print(f"{'plain loop (the same dlib calls)':<34}{n / loop:>10.2f}{loop / n:>10.3f}")
    print(f"{'faces stage (ledger, filters, ids)':<34}{n / stage:>10.2f}{stage / n:>10.3f}")
    print(f"stage time / loop time: {stage / loop:.2f}x (target 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
