"""What every HTML report shares: data URIs, thumbnails and the base style, so each page is one offline file."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from PIL import Image

CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{margin-bottom:4px}table{border-collapse:collapse;font-size:13px;margin:8px 0 16px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right;vertical-align:top}th{background:#f4f4f4}
td.l,th.l{text-align:left}caption{text-align:left;font-weight:600;padding:4px 0}
.key{font-family:monospace;font-size:12px}img.plot{max-width:100%}.nav{font-size:13px;margin:0 0 8px}"""


def back_link(depth: int = 1) -> str:
    """A link to the run's front page (`OUT/index.html`) from a page `depth` folders below it."""
    return f"<p class=nav><a href='{'../' * depth}index.html'>&larr; all reports of this run</a></p>"


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def thumb(img: Image.Image, size: int, resample: Image.Resampling, fmt: str = "PNG") -> str:
    """A data URI of `img` shrunk to fit `size` x `size`."""
    img = img.copy()
    img.thumbnail((size, size), resample)
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return data_uri(buf.getvalue(), f"image/{fmt.lower()}")


def kv_table(title: str, items: dict[str, Any], head: tuple[str, str] = ("", "count")) -> str:
    """A captioned two-column table (name, value) with headers; "none" when empty."""
    e = html.escape
    rows = "".join(f"<tr><td class=l>{e(str(k))}</td><td>{e(str(v))}</td></tr>" for k, v in items.items())
    return (f"<table><caption>{e(title)}</caption><tr><th class=l>{e(head[0])}</th><th>{e(head[1])}</th></tr>"
            f"{rows or '<tr><td class=l colspan=2>none</td></tr>'}</table>")
