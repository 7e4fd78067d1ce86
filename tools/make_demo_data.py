"""Build the offline demo dataset from real face photos that ship inside installed packages.

Faces: scikit-image's astronaut portrait (Eileen Collins, NASA, public domain) and matplotlib's
Grace Hopper photograph, plus deterministic variants (mirror, crop, grayscale, CMYK, 16-bit, palette,
alpha, BMP, WebP, EXIF-rotated, unicode file name, mislabelled extension), and files from the wild
that must be reported, not crash a run: a truncated JPEG, a zero-byte file, text named .jpg, a 16x16
image, an exact duplicate, a symlinked duplicate, a broken symlink, a symlink loop, a GIF, a PNG that
claims 40000x40000 pixels (decompression bomb) and a non-image file. Also a small CelebAMask-HQ
layout (images, per-class binary masks, the official split files) and an FFHQ layout with license
metadata. And `hostile/`, what an attacker or a damaged disk hands a toolkit (the demo manifest
ingests it; every item must become a row or an `ignored.tsv` line, nothing outside the tree is read):
faces under file names with HTML, Markdown table pipes, a newline and emoji; a 64x8000 strip; a
fifo named .jpg; symlinks to /etc/passwd, to /etc and out of the source folder; a tar with symlink,
hardlink, device, fifo and path-traversal members; a parquet with empty, null and garbage cells and
hostile ids.

Usage: python tools/make_demo_data.py [--out .cache/demo] [--force]
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import shutil
import struct
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

VERSION = "4"  # bump when the generated files change


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def grace_hopper() -> Image.Image:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    with Image.open(path) as img:
        return img.convert("RGB")


def save(img: Image.Image, path: Path, fmt: str, **kw: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt, **kw)


def png_bomb(width: int, height: int) -> bytes:
    """A valid-looking 1-bit PNG whose header claims width x height; the data is a few bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def make_photos(root: Path) -> None:
    a, g = astronaut(), grace_hopper()
    save(a, root / "astronaut.png", "PNG")
    save(g, root / "grace_hopper.jpg", "JPEG", quality=92)
    save(a.transpose(Image.Transpose.FLIP_LEFT_RIGHT), root / "variants" / "astronaut_mirror.jpg", "JPEG", quality=90)
    save(a.crop((96, 16, 416, 336)), root / "variants" / "astronaut_crop.webp", "WEBP", quality=90)
    save(g.convert("L"), root / "variants" / "hopper_gray.png", "PNG")
    save(g.convert("CMYK"), root / "variants" / "hopper_cmyk.jpg", "JPEG", quality=90)
    a16 = (np.asarray(a.convert("L"), np.uint16) * 257).astype(np.uint16)
    save(Image.fromarray(a16), root / "variants" / "astronaut_16bit.png", "PNG")
    save(a.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), root / "variants" / "astronaut_palette.png", "PNG")
    rgba = g.convert("RGBA")
    rgba.putalpha(ellipse((g.size[1], g.size[0]), (0, 0, g.size[0], g.size[1])))  # transparent corners
    save(rgba, root / "variants" / "hopper_alpha.png", "PNG")
    save(g.resize((256, 300)), root / "variants" / "hopper.bmp", "BMP")
    # Stored rotated 90 degrees with EXIF orientation 6 ("rotate 90 CW to display"): upright once applied.
    exif = Image.Exif()
    exif[0x0112] = 6
    save(g.transpose(Image.Transpose.ROTATE_90), root / "variants" / "hopper_exif_rotated.jpg", "JPEG",
         quality=90, exif=exif)
    save(a.rotate(8, resample=Image.Resampling.BICUBIC, fillcolor=(255, 255, 255)),
         root / "portraits" / "astronaute café ☕.jpg", "JPEG", quality=90)
    save(g.transpose(Image.Transpose.FLIP_LEFT_RIGHT), root / "portraits" / "mislabelled.jpg", "PNG")
    # Files from the wild.
    bad = root / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    a.save(buf, "JPEG", quality=90)
    (bad / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("these are my notes, not a photo\n")
    save(a.resize((16, 16)), bad / "tiny.png", "PNG")
    shutil.copyfile(root / "astronaut.png", bad / "astronaut_copy.png")
    (bad / "bomb.png").write_bytes(png_bomb(40000, 40000))
    save(a.resize((128, 128)), bad / "animation.gif", "GIF")
    (root / "README.txt").write_text("demo photos for facecurate\n")
    links = [("same_astronaut.png", "../astronaut.png"), ("missing.jpg", "does_not_exist.jpg")]
    for name, target in links:
        (bad / name).symlink_to(target)
    (root / "variants" / "loop").symlink_to("..", target_is_directory=True)


def ellipse(shape: tuple[int, int], box: tuple[float, float, float, float]) -> Image.Image:
    m = Image.new("L", shape[::-1], 0)
    ImageDraw.Draw(m).ellipse(box, fill=255)
    return m


def face_masks(flip: bool, glasses: bool, hat: bool) -> dict[str, Image.Image]:
    """Plausible hand-made CelebAMask-HQ annotations at 512x512 for a centred face."""
    s = (512, 512)
    parts = {
        "cloth": (60, 420, 452, 700), "neck": (200, 330, 312, 470), "skin": (160, 120, 352, 380),
        "hair": (130, 60, 382, 230), "l_ear": (140, 220, 180, 290), "r_ear": (332, 220, 372, 290),
        "l_brow": (195, 195, 245, 210), "r_brow": (267, 195, 317, 210),
        "l_eye": (200, 220, 240, 240), "r_eye": (272, 220, 312, 240),
        "nose": (240, 235, 272, 300), "u_lip": (222, 315, 290, 330), "mouth": (228, 328, 284, 334),
        "l_lip": (222, 333, 290, 350),
    }
    if glasses:
        parts["eye_g"] = (185, 210, 327, 250)
    if hat:
        parts["hat"] = (120, 30, 392, 140)
    out = {}
    for name, box in parts.items():
        m = ellipse(s, box)
        out[name] = m.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else m
    if flip:  # a mirrored face swaps left and right parts
        swap = {"l_ear": "r_ear", "r_ear": "l_ear", "l_brow": "r_brow", "r_brow": "l_brow",
                "l_eye": "r_eye", "r_eye": "l_eye"}
        out = {swap.get(k, k): v for k, v in out.items()}
    return out


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_hostile(root: Path) -> None:
    a, g = astronaut(), grace_hopper()
    files = root / "files"
    save(a, files / "<img src=x onerror=alert(1)>.jpg", "JPEG", quality=90)
    save(g, files / "| pipe | table |.png", "PNG")
    save(g.transpose(Image.Transpose.FLIP_LEFT_RIGHT), files / "line\nbreak `code`.jpg", "JPEG", quality=90)
    save(a.crop((64, 0, 448, 384)), files / "ünïcødé 人脸 🙂.webp", "WEBP", quality=90)
    save(Image.new("RGB", (64, 8000), (200, 180, 160)), files / "strip_64x8000.png", "PNG")
    os.mkfifo(files / "pipe.jpg")  # opening it for reading would block forever
    for name, target in [("passwd.jpg", "/etc/passwd"), ("etc", "/etc"), ("escape.png", "../../photos/astronaut.png")]:
        (files / name).symlink_to(target)
    good = _jpeg(a.resize((256, 256)))
    with tarfile.open(root / "members.tar", "w") as tf:
        def add(name: str, data: bytes = b"", **kw: object) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for k, v in kw.items():
                setattr(info, k, v)
            tf.addfile(info, io.BytesIO(data) if data else None)

        add("good.jpg", good)
        add("text.jpg", b"<html><script>alert(1)</script></html>")
        add("../escape.jpg", good)
        add("link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add("hard.jpg", type=tarfile.LNKTYPE, linkname="good.jpg")
        add("dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("fifo.jpg", type=tarfile.FIFOTYPE)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({
        "name": ["good", "<b>bold</b>", "../../etc/passwd", "a|b", "empty"],
        "image": pa.array([_jpeg(g.resize((200, 250))), b"not an image", good[: len(good) // 3], None, b""],
                          pa.binary()),
    }), root / "cells.parquet")


def make_celebamask(root: Path) -> None:
    a, g = astronaut(), grace_hopper()
    side = min(g.size)
    g_sq = g.crop((0, 0, side, side))
    images = [a.resize((1024, 1024)), g_sq.resize((1024, 1024)), a.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((1024, 1024))]
    specs = [(False, False, False), (False, True, False), (True, False, True)]
    for idx, (img, (flip, glasses, hat)) in enumerate(zip(images, specs, strict=True)):
        save(img, root / "CelebA-HQ-img" / f"{idx}.jpg", "JPEG", quality=92)
        for name, m in face_masks(flip, glasses, hat).items():
            # CelebAMask-HQ's files are 3-channel 0/255 PNGs; the first channel decides membership.
            save(Image.merge("RGB", (m, m, m)), root / "CelebAMask-HQ-mask-anno" / str(idx // 2000) / f"{idx:05d}_{name}.png", "PNG")
    orig = ["000001.jpg", "000002.jpg", "000003.jpg"]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text(
        "idx         orig_idx    orig_file\n" + "".join(f"{i:<12}{i + 1:<12}{f}\n" for i, f in enumerate(orig)))
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n")


def make_ffhq(root: Path) -> None:
    a, g = astronaut(), grace_hopper()
    side = min(g.size)
    imgs = {"00000": a.resize((1024, 1024)), "00001": g.crop((0, 40, side, 40 + side)).resize((1024, 1024))}
    meta = {}
    for i, (stem, img) in enumerate(imgs.items()):
        save(img, root / "images1024x1024" / "00000" / f"{stem}.png", "PNG", compress_level=1)
        meta[str(i)] = {
            "category": "training" if i == 0 else "validation",
            "metaData": {"photo_url": f"https://example.org/photo/{stem}", "photo_title": "demo",
                         "author": "demo", "country": "", "license": "Public Domain Mark",
                         "license_url": "https://creativecommons.org/publicdomain/mark/1.0/",
                         "date_uploaded": "2020-01-01", "date_crawled": "2020-01-02"},
            "image": {"file_url": "", "file_path": f"images1024x1024/00000/{stem}.png", "file_size": 0,
                      "file_md5": "", "pixel_size": [1024, 1024], "pixel_md5": "", "face_landmarks": []},
        }
    (root / "ffhq-dataset-v2.json").write_text(json.dumps(meta, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(".cache/demo"))
    ap.add_argument("--force", action="store_true", help="rebuild even if the stamp says it is current")
    args = ap.parse_args(argv)
    stamp = args.out / ".stamp"
    if stamp.exists() and stamp.read_text() == VERSION and not args.force:
        print(f"demo data is current in {args.out}")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out.parent / f".{args.out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent test runs build it once
        if stamp.exists() and stamp.read_text() == VERSION and not args.force:
            return 0
        if args.out.exists():
            shutil.rmtree(args.out)
        make_photos(args.out / "photos")
        make_celebamask(args.out / "celebamask-hq")
        make_ffhq(args.out / "ffhq")
        make_hostile(args.out / "hostile")
        stamp.write_text(VERSION)
    n = sum(len(files) for _, _, files in os.walk(args.out))
    print(f"demo data: {n} files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
