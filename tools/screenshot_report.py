"""Render a run's `stats/report.html` in headless Chromium to a PNG (proof that it opens with its images).

Usage:
    python tools/screenshot_report.py runs/faces/stats/report.html --png report.png
    python tools/screenshot_report.py demo_out --png /tmp/report.png --width 1280 --height 4000

Chromium runs sandboxless with a throwaway profile and every background network feature off, so it
works in containers and CI without network access. Exit code 2 when no Chromium is installed
(Debian: `apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """The first Chromium-family browser on PATH (or $CHROMIUM), else None."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 3600, timeout: float = 90.0) -> Path:
    """Render `html` to `png` at width x height; raises RuntimeError when Chromium is absent or fails."""
    browser = find_chromium()
    if browser is None:
        raise RuntimeError("no Chromium found on PATH (install it: apt-get install -y chromium)")
    html, png = Path(html).resolve(), Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="facecurate-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--screenshot={png}",
               f"--window-size={width},{height}", html.as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if not png.exists() or png.stat().st_size == 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"Chromium wrote no screenshot (exit {proc.returncode}): {' | '.join(tail)}")
    return png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report", type=Path, help="report.html, or a run folder (uses stats/report.html)")
    ap.add_argument("--png", type=Path, default=Path("report.png"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=3600)
    args = ap.parse_args(argv)
    report = args.report / "stats" / "report.html" if args.report.is_dir() else args.report
    if not report.is_file():
        print(f"error: {report} does not exist (run the stats stage first)", file=sys.stderr)
        return 1
    if find_chromium() is None:
        print("error: no Chromium on PATH; install it (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    out = screenshot(report, args.png, args.width, args.height)
    print(f"{out} ({out.stat().st_size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
