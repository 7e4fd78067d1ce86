"""What the dataset card's Hub metadata and its personal-data section are made of: names, licenses, sources.

Pure functions over strings and the resolved manifest, so the card stays deterministic: `public_id` (a
local model as its folder name; no absolute path leaves the run, in the card or in a sample's `json`),
`pretty_name`, the Hub's `size_categories` bucket, `hub_license` (a recorded license as a Hub license id)
and `license_meta` (the header's license keys), `source_kinds` (each source's type, for
`source_datasets` and the consent table) and, per source type, what its own documentation says of
consent and terms (`CONSENT`).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.data.sources import DEFAULT_NAMES, detect_type, safe_part

# A hub id is `name` or `org/name` and never starts with a dot; anything else names a file on this machine.
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def is_local(model: Any) -> bool:
    """Whether a model setting names a file or folder on this machine rather than a hub id."""
    if not isinstance(model, str):
        return False
    return model.startswith(("/", "~", ".", "\\")) or bool(_DRIVE.match(model)) or model.count("/") > 1


def public_id(model: Any) -> Any:
    """A hub id unchanged; a local file or folder as its last name (`/home/me/vae-flux` -> `vae-flux`),
    so no absolute path leaves the run in a sample's `json`, `index.json` or the card."""
    if not is_local(model):
        return model
    return re.split(r"[\\/]", model.rstrip("/\\"))[-1] or "local"


def shown_model(model: Any, local: bool = False) -> Any:
    """A model as the card shows it: `vae-flux (local)` for a local one, the hub id otherwise."""
    return f"{public_id(model)} (local)" if local or is_local(model) else model


def public_settings(obj: Any) -> Any:
    """`obj` (model settings) with every local path as `shown_model` shows it."""
    if isinstance(obj, dict):
        return {k: public_settings(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [public_settings(v) for v in obj]
    return shown_model(obj) if is_local(obj) else obj


_WORDS = {"ffhq": "FFHQ", "celeba": "CelebA", "celebahq": "CelebA-HQ", "hq": "HQ", "dit": "DiT", "vae": "VAE",
          "sd": "SD", "xl": "XL", "mmface": "MMFace"}


def pretty_name(name: Any) -> str:
    """The manifest name as a title (`ffhq-faces_256` -> `FFHQ Faces 256`): the card's `pretty_name`."""
    words = [w for w in re.split(r"[\s_-]+", str(name)) if w]
    return " ".join(_WORDS.get(w.lower(), w[:1].upper() + w[1:]) for w in words) or "Faces"


# The Hub's size buckets (its dataset card spec), by number of samples.
SIZE_CATEGORIES = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T")]


def size_category(n: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if n < limit), "n>1T")


# License ids the Hub knows (hub-docs, repositories-licenses) that fit images and data.
HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "etalab-2.0", "gfdl", "gpl-3.0",
    "lgpl-3.0", "isc", "mpl-2.0", "odc-by", "odbl", "ofl-1.1", "unlicense", "zlib", "pddl"})
# Flickr's license names, as FFHQ's metadata records them (Flickr's Creative Commons licenses are 2.0).
LICENSE_ALIASES = {"attribution license": "cc-by-2.0", "attribution-noncommercial license": "cc-by-nc-2.0",
                   "attribution-noncommercial-sharealike license": "cc-by-nc-sa-2.0",
                   "public domain dedication (cc0)": "cc0-1.0", "public domain cc0 1.0": "cc0-1.0", "cc0": "cc0-1.0"}


def hub_license(label: str) -> str | None:
    """The Hub license id of a recorded license (`CC BY 4.0` -> `cc-by-4.0`), or None when it has none."""
    text = " ".join(str(label).lower().split())
    lid = LICENSE_ALIASES.get(text) or re.sub(r"[\s_]+", "-", text)
    return lid if lid in HUB_LICENSES else None


NO_LICENSE = "none recorded (the source's terms apply)"
# The source datasets the Hub knows a card by, per source type; other sources are `original`.
SOURCE_DATASETS = {"ffhq": "FFHQ", "celebamask-hq": "CelebAMask-HQ"}
_KIND_OF_NAME = {v: k for k, v in DEFAULT_NAMES.items()}


def license_meta(licenses: Counter | dict) -> dict[str, str]:
    """The header's license keys: one Hub license id when every sample has the same recognised license,
    else `other` with a `license_name` and a link to the card's Licenses section (the per-sample table)."""
    labels = sorted(licenses, key=str)
    if not labels:
        return {"license": "unknown"}
    if len(labels) == 1 and (lid := hub_license(labels[0])):
        return {"license": lid}
    if len(labels) > 1:
        name = "per-sample"
    elif labels[0] == NO_LICENSE:
        name = "source-terms"
    else:
        name = re.sub(r"[^a-z0-9.]+", "-", str(labels[0]).lower()).strip("-.")[:64] or "other"
    return {"license": "other", "license_name": name, "license_link": "README.md#licenses"}


def source_kinds(resolved: dict, names: Any) -> dict[str, str]:
    """source name -> its type (ffhq, celebamask-hq, folder, ...), from the ingest settings of the resolved
    manifest, named as ingest names them; a source it does not list is known by its default name."""
    ingest = ((resolved.get("manifest") or {}).get("stages") or {}).get("ingest") or {}
    listed: dict[str, str] = {}
    for src in ingest.get("sources") or []:
        if not isinstance(src, dict) or not src.get("path"):
            continue
        kind = str(src.get("type") or "auto")
        if kind == "auto":
            try:
                kind = detect_type(Path(src["path"]))
            except (OSError, ValueError):
                kind = "folder"
        name = (safe_part(str(src["name"])) if src.get("name")
                else DEFAULT_NAMES.get(kind) or safe_part(Path(str(src["path"])).name or "images"))
        listed[name] = kind
    return {n: listed.get(n) or _KIND_OF_NAME.get(n, "folder") for n in sorted(names, key=str)}


# Per source type: where its images come from, and what is known of consent and terms (the sources' own
# documentation: NVlabs/ffhq-dataset's README, CelebA's and CelebAMask-HQ's agreements).
CONSENT = {
    "ffhq": ("FFHQ: Flickr photos their authors published under CC BY 2.0, CC BY-NC 2.0, Public Domain Mark "
             "1.0, CC0 1.0 or U.S. Government Works",
             "Not recorded from the people shown: NVIDIA collected photos that, to its knowledge, their authors "
             "meant for free use and redistribution, and it removes photos on request (see below)."),
    "celebamask-hq": ("CelebA-HQ / CelebAMask-HQ: photos of celebrities collected from the Internet (CUHK)",
                      "Not recorded. CelebA's agreement allows non-commercial research only and no further "
                      "copying, publishing or distributing of any part of it; CelebAMask-HQ's masks are for "
                      "non-commercial research and education."),
}
OWN_SOURCE = ("Images the publisher of this dataset supplied",
              "Not recorded by facecurate: the publisher must hold the rights to every image and a legal basis "
              "(such as consent) for each identifiable person.")
