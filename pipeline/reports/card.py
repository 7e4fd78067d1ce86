"""The dataset card (`shards/README.md`) and the Hugging Face features of the shards (`features.json`).

The card is written from what the run recorded, never from assumptions: counts from the shard ledger
and `index.json`, models and revisions from `manifest.resolved.yaml`, licenses from the index rows,
statistics from the samples (class pixel shares, flags, captions) plus `stats/attributes.json` when the
stats stage ran. Its YAML header is the Hub's dataset card metadata (license, size category, language,
annotation creators, source datasets, tasks, tags) and names the splits with their sample counts and the
exact features, so `datasets.load_dataset("<this folder or its hub repo>")` works and samples that lack a
field still load (Hugging Face would otherwise infer the schema from the first five samples). No
timestamps, and ties in every count are broken by name: the same data gives the same card, whatever
order the ledger rows came in.

No absolute path reaches the card: a local model is shown by its folder name and `(local)`
(`card_meta.public_id`, which the shard stage also applies to every sample's `json`). A section on
personal and biometric data says, per source, what is known of consent and licences and how to have an
image removed.

Names, licenses and every other string a user or a source supplied are escaped before they reach the
card (`md`: one line, HTML entities for `<>&`, Markdown punctuation backslash-escaped, so a `|` cannot
split a table cell), and the YAML header is dumped with every string value double-quoted, so no value
can end the front matter or change its structure.
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipeline import __version__
from pipeline.core.ledger import OK, atomic_write_bytes
from pipeline.data.labels import NAMES, NUM_CLASSES
from pipeline.data.shard_assembly import as_table, value_counts
from pipeline.reports.card_meta import (
    CONSENT,
    NO_LICENSE,
    OWN_SOURCE,
    SOURCE_DATASETS,
    license_meta,
    pretty_name,
    public_settings,
    shown_model,
    size_category,
    source_kinds,
)

LATENT_FIELDS = {"latent": "image", "mask_latent": "colourised mask", "sketch_latent": "sketch"}


class Md(str):
    """Markdown we wrote ourselves: `_table` passes it through, where every other cell is escaped."""


_MD_PUNCT = re.compile(r"([\\`*_\[\]|])")


def md(value: Any) -> str:
    """`value` as inert Markdown text: one line, `<>&` as entities, Markdown punctuation escaped."""
    text = html.escape(" ".join(str(value).split()), quote=False)
    return _MD_PUNCT.sub(r"\\\1", text)


JSON_FIELDS = Md("key, vae {id, subfolder, revision, scaling_factor, shift_factor, channels}, resolution, "
                 "class_pixels[19], flags, license, source_url, split, source, mask_source, "
                 "aligned {photo_key, procedure, crop}")

def hf_features(vaes: dict[str, int], resolution: int) -> dict[str, Any]:
    """The shards' schema as `datasets.Features.to_dict()` data (written by hand: no `datasets` needed)."""
    s, i64, f64 = ({"dtype": t, "_type": "Value"} for t in ("string", "int64", "float64"))
    image = {"_type": "Image"}
    feats: dict[str, Any] = {"jpg": image, "mask.png": image, "sketch.png": image,
                             "captions.json": {"feature": s, "_type": "List"}}
    for name, ch in sorted(vaes.items()):
        for f in LATENT_FIELDS:
            shape = [ch, resolution // 8, resolution // 8]
            feats[f"{name}.{f}.npy"] = {"shape": shape, "dtype": "float16", "_type": "Array3D"}
    vae = {"id": s, "subfolder": s, "revision": s, "scaling_factor": f64, "shift_factor": f64,
           "channels": i64}
    feats["json"] = {"key": s, "vae": {n: vae for n in sorted(vaes)}, "resolution": i64,
                     "class_pixels": {"feature": i64, "_type": "List"},
                     "flags": {"feature": s, "_type": "List"}, "license": s, "source_url": s, "split": s,
                     "source": s, "mask_source": s, "aligned": {"photo_key": s, "procedure": s, "crop": s}}
    feats["__key__"] = feats["__url__"] = s
    return feats


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; every cell is escaped unless it is `Md` (the header is ours)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cells = [[c if isinstance(c, Md) else md(c) for c in r] for r in rows]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])


def _ranked(c: Counter | dict, n: int | None = None) -> list[tuple[Any, int]]:
    """Most common first, ties by name: `Counter.most_common` breaks ties by insertion order, which is
    the order the ledger rows came in and differs between runs."""
    return sorted(c.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]


def _counts(c: Counter | dict, empty: str = "none") -> str:
    return ", ".join(f"{md(k)} {v:,}" for k, v in c.items()) or empty


class _Quoted(str):
    """A YAML string value always written double-quoted (escapes instead of raw newlines)."""


class _CardDumper(yaml.SafeDumper):
    pass


_CardDumper.add_representer(_Quoted, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style='"'))


def _quoted(obj: Any) -> Any:
    """Every string value (not key) of `obj` as `_Quoted`."""
    if isinstance(obj, dict):
        return {k: _quoted(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_quoted(v) for v in obj]
    return _Quoted(obj) if isinstance(obj, str) else obj


def front_matter(head: dict[str, Any]) -> str:
    """The card's YAML header: a value holding `---`, a newline or `: ` stays one quoted scalar, and
    `yaml.safe_load` gives back the exact strings."""
    body = yaml.dump(_quoted(head), Dumper=_CardDumper, sort_keys=False, allow_unicode=True,
                     width=float("inf"))  # no line wrapping inside a value
    return "---\n" + body.strip() + "\n---"


def _header(name: str, index: dict, counts: Counts, kinds: dict[str, str], features: dict[str, Any]) -> str:
    present = {f.split(".")[-2] if f.endswith(".npy") else f for f in counts.fields}
    tags = ["faces", "webdataset", "facecurate"]
    tags += [t for t, f in (("face-parsing", "mask.png"), ("sketch", "sketch.png"),
                            ("machine-generated-captions", "captions.json"), ("vae-latents", "latent"))
             if f in present]
    head: dict[str, Any] = {
        "pretty_name": pretty_name(name), **license_meta(counts.licenses), "language": ["en"],
        "annotations_creators": ["machine-generated"], "language_creators": ["machine-generated"],
        "size_categories": [size_category(index["samples"])],
        "source_datasets": sorted({SOURCE_DATASETS.get(k, "original") for k in kinds.values()}) or ["original"],
        "task_categories": ["text-to-image"], "tags": tags,
        "configs": [{"config_name": "default",
                     "data_files": [{"split": sp, "path": f"{sp}-*.tar"} for sp in index["splits"]]}],
    }
    info: dict[str, Any] = {}
    try:  # the YAML form of the features comes from `datasets`; the card is complete without it
        import datasets

        info["features"] = datasets.Features.from_dict(features)._to_yaml_list()
    except Exception:  # noqa: BLE001
        pass
    info["splits"] = [{"name": sp, "num_examples": d["samples"]} for sp, d in index["splits"].items()]
    info["download_size"] = sum(d["bytes"] for d in index["splits"].values())
    head["dataset_info"] = info
    return front_matter(head)





@dataclass
class Counts:
    """What the card counts over the ok samples, from Arrow columns (never a dict per sample).

    Args:
        n: ok samples.
        fields: field -> samples that have it.
        licenses, sources: value -> samples.
        class_pixels: per class, total pixels; class_samples: per class, samples with any.
        flags: folded flag (`_fold`) -> occurrences; captions: captions per sample -> samples.
    """

    n: int
    fields: Counter
    licenses: Counter
    sources: Counter
    class_pixels: list[int]
    class_samples: list[int]
    flags: Counter
    captions: dict[int, int]

    @classmethod
    def of(cls, rows: pa.Table | list[dict[str, Any]]) -> Counts:
        t = as_table(rows)
        ok = t.filter(pc.equal(t["status"], OK)) if t.num_rows else t
        col = (lambda c: ok[c] if c in ok.column_names else pa.nulls(ok.num_rows))  # noqa: E731
        lic = col("license")
        lic = pc.if_else(pc.fill_null(pc.not_equal(pc.cast(lic, pa.string()), ""), False),
                         pc.cast(lic, pa.string()), pa.scalar(NO_LICENSE)) if ok.num_rows else lic
        totals, samples = np.zeros(NUM_CLASSES, np.int64), np.zeros(NUM_CLASSES, np.int64)
        pixels = col("class_pixels")
        for lo in range(0, ok.num_rows, 1 << 16):  # one chunk of rows at a time
            part = pixels.slice(lo, 1 << 16)
            part = part.filter(pc.is_valid(part))
            if len(part):
                flat = pc.list_flatten(part).to_numpy(zero_copy_only=False).reshape(len(part), NUM_CLASSES)
                totals += flat.sum(axis=0)
                samples += (flat > 0).sum(axis=0)
        flags: Counter = Counter()
        for flag, n in value_counts(pc.list_flatten(col("flags")) if ok.num_rows else pa.array([])).items():
            flags[_fold(flag)] += n
        caps = value_counts(pc.fill_null(pc.cast(col("captions"), pa.int64()), 0)) if ok.num_rows else {}
        return cls(ok.num_rows, Counter(value_counts(pc.list_flatten(col("fields"))) if ok.num_rows else {}),
                   Counter(value_counts(lic)), Counter(value_counts(col("source"))), totals.tolist(),
                   samples.tolist(), flags, dict(sorted(caps.items())))


def _schema(index: dict, counts: Counts) -> list[str]:
    res, present = index["resolution"] or 0, counts.fields
    rows = [["jpg", "RGB JPEG, quality 95, 4:4:4 chroma", present["jpg"]],
            ["mask.png", "uint8 label map, CelebAMask-HQ ids 0..18, single channel", present["mask.png"]],
            ["sketch.png", "uint8 sketch, black lines on white, single channel", present["sketch.png"]],
            ["captions.json", "JSON list of up to 10 captions", present["captions.json"]]]
    for v, m in index["vaes"].items():
        for f, what in LATENT_FIELDS.items():
            shape = f"({m.get('channels')}, {res // 8}, {res // 8})"
            rows.append([f"{v}.{f}.npy", f"{what}: VAE latent mean, float16 {shape}, unscaled, unshifted",
                         present[f"{v}.{f}.npy"]])
    rows.append(["json", JSON_FIELDS, present["json"]])
    return ["## Sample schema", "",
            "`__key__` is the facecurate key percent-encoded (`photos/astronaut` -> `photos%2Fastronaut`): "
            "`urllib.parse.unquote(__key__)` gives it back, and `json[\"key\"]` holds it too.", "",
            _table(["field", "content", f"samples with it (of {counts.n:,})"],
                   [[Md(f"`{a}`"), b, f"{c:,}"] for a, b, c in rows]),  # VAE names are [a-z0-9_]
            "", "A missing field is absent (not empty), and `json.flags` names it (`no_mask`, `no_sketch`, "
            "`no_captions`, `no_latents`) wherever its stage ran.", "",
            "Every key of `json` is in every sample, always with the same type, never null where a "
            "sample lacks the value: `license`, `source_url` (not recorded), `mask_source` (no mask) and "
            "`aligned` (`photo_key`, `procedure`, `crop`: not a face crop of the `faces` stage) are "
            "`\"\"`; `flags` is a list, possibly empty; `class_pixels` is 19 zeros without a mask. `vae` "
            "has an entry per VAE whose latents the sample has; its `subfolder`, `revision` and "
            "`shift_factor` are that VAE's settings, the same in every sample (null where the VAE has none); "
            "its `id` is the hub id, or the folder name of a local VAE (no path leaves the run: pass that "
            "folder as `--vae` to `facecurate sample`)."]


def _models(resolved: dict, index: dict) -> list[str]:
    models = public_settings(resolved.get("models") or {})  # local models by name: no path of this machine
    out = ["## Models and revisions", "",
           _table(["setting", "model"], [[k, Md(f"<code>{md(json.dumps(v))}</code>")]
                                         for k, v in models.items()])
           if models else "No model settings were recorded."]
    if index["vaes"]:
        cols = ["VAE", "id", "revision", "channels", "scaling_factor", "shift_factor", "samples"]
        out += ["", _table(cols, [[v, shown_model(m.get("id"), bool(m.get("local"))), m.get("revision") or "-",
                                   m.get("channels"),
                                   m.get("scaling_factor"), m.get("shift_factor"), f"{m['samples']:,}"]
                                  for v, m in index["vaes"].items()]),
                "", "Latents are stored raw: apply `(z - shift_factor) * scaling_factor` (diffusers) or "
                "`z * scaling_factor` (MMFace-DiT) when loading; both factors are in every sample's `json`."]
    return out


# The faces stage's dlib models (dlib-models' README), for runs that used it.
FACE_MODEL_LICENSES = [
    ["dlib HOG frontal face detector", "Boost Software License (dlib)"],
    ["shape_predictor_68_face_landmarks", "trained on iBUG 300-W, whose license excludes commercial use"],
    ["dlib_face_recognition_resnet_model_v1 (identity)", "CC0 1.0 (public domain)"],
    ["mmod_human_face_detector (CNN detector)", "CC0 1.0 (public domain)"],
]


def _licenses(counts: Counts, kinds: dict[str, str], faces: bool = False) -> list[str]:
    lic = counts.licenses
    meta = license_meta(lic)
    if meta["license"] == "other":
        head = (f"The card's header says `license: other` (`license_name: {meta['license_name']}`): "
                + ("the samples carry different licenses, counted below; each sample's own terms apply."
                   if len(lic) > 1 else "the samples' license has no Hub license id."))
    else:
        head = f"The card's header says `license: {meta['license']}`: every sample has that license."
    kinds_used = set(kinds.values())
    ffhq = (["", "FFHQ itself (its metadata and the collection) is CC BY-NC-SA 4.0 by NVIDIA: non-commercial "
             "use, credit by citing its paper, and derivative works under the same license; its images keep "
             "their Flickr licenses (CC BY 2.0, CC BY-NC 2.0, Public Domain Mark 1.0, CC0 1.0, U.S. Government "
             "Works)."] if "ffhq" in kinds_used else [])
    extra = (["", "Faces were detected, aligned and grouped by identity with dlib's models (`faces` stage); their "
              "terms, from dlib-models:", "", _table(["model", "license"], FACE_MODEL_LICENSES)] if faces else [])
    return ["## Licenses", "", head, "",
            "Every sample's `json` has its image's `license` and `source_url` (FFHQ records one per image: "
            "keep the attribution). Images without one carry their source's terms (CelebA-HQ / CelebAMask-HQ: "
            "non-commercial research only). Masks, sketches, captions and latents derive from the image and "
            "follow its terms.", "",
            _table(["license", "samples"], [[k, f"{v:,}"] for k, v in _ranked(lic)]), *ffhq, *extra]


def _personal(counts: Counts, kinds: dict[str, str], faces: bool) -> list[str]:
    """What a face dataset must say about the people in it: consent per source, removal, caption bias."""
    rows = [[name, f"{n:,}", *CONSENT.get(kinds.get(name, "folder"), OWN_SOURCE)]
            for name, n in _ranked(counts.sources)]
    used = set(kinds.values())
    parts = ["## Personal and biometric data", "",
             "Every sample is a photo of a face, of a real person unless a source is synthetic. Face images "
             "are personal data, and biometric data where they are processed to identify someone (a special "
             "category under the EU GDPR, Art. 9; laws such as Illinois' BIPA regulate face geometry). "
             "facecurate stores no names or identities, but a key comes from the source's file name (rename "
             "files that name a person before a run), and `json.source_url` can lead to the original photo "
             "and its author.", "",
             _table(["source", "samples", "images", "consent and terms"], rows)]
    if faces:
        parts += ["", "The `faces` stage computed a face descriptor per face (dlib) to group faces by identity, "
                  "for near-duplicates and the split; descriptors and identity groups stay in the run folder "
                  "and are not in the shards."]
    parts += ["", "**Removal.** Anyone shown in an image, or its author, can ask for its removal: open a "
              "discussion on this dataset's Hub page (or write to its owner) with the sample's `json.key`, its "
              "`__key__` or the image. The publisher drops the image from the sources, runs the pipeline and "
              "`facecurate publish` again and uploads the result, which removes the sample from every shard, "
              "`index.json` and this card; the Hub keeps earlier revisions until the repository's history is "
              "squashed (`HfApi().super_squash_history`)."]
    if "ffhq" in used:
        parts += ["", "For FFHQ images, NVIDIA's own process applies as well: tag the Flickr photo `no_cv`, "
                  "change its license to None (all rights reserved) or a NoDerivs license, make it private or "
                  "delete it, and write to researchinquiries@nvidia.com with the Flickr user name "
                  "(https://nvlabs.github.io/ffhq-dataset/search/ finds a user's photos). A removal from FFHQ "
                  "reaches this dataset when it is built again from the updated FFHQ."]
    if counts.fields.get("captions.json"):
        parts += ["", "**Captions are machine-generated** (the caption and refine models in the table above). "
                  "They can be wrong, and what they say of age, gender, ethnicity, expression or appearance is "
                  "the models' perception, with the models' biases, not how the people shown describe "
                  "themselves."]
    bias = [b for k, b in (("ffhq", "FFHQ inherits the biases of Flickr"),
                           ("celebamask-hq", "CelebA-HQ shows mostly celebrities")) if k in used]
    if bias:
        parts += ["", "; ".join(bias) + ": neither is a representative sample of people."]
    parts += ["", "Not for identifying, recognising or tracking people, or for inferring sensitive attributes "
              "of the people shown."]
    return parts


def _statistics(out: Path, counts: Counts) -> list[str]:
    totals = counts.class_pixels
    share = [[NAMES[c], f"{totals[c] / (sum(totals) or 1):.4f}", f"{counts.class_samples[c]:,}"]
             for c in range(NUM_CLASSES)]
    flags, caps = counts.flags, counts.captions
    sources = _ranked(counts.sources)
    parts = ["## Statistics", "", _table(["source", "samples"], [[k, f"{v:,}"] for k, v in sources]),
             "", "Class pixel share over the stored masks (at the shard resolution):", "",
             _table(["class", "pixel share", "samples with it"], share), "",
             "Captions per sample: " + ", ".join(f"{k}: {v:,}" for k, v in caps.items()) + ".", "",
             "Flags: " + _counts(dict(_ranked(flags, 20))) + "."]
    stats = out / "stats" / "attributes.json"
    if stats.exists():
        parts += ["", "From the stats stage (`stats/attributes.json`):", "", _stats_summary(stats)]
    return parts


def _fold(flag: str) -> str:
    """A flag without its per-sample detail (`captions:mask_contradiction:hat@8` -> `captions:mask_contradiction`,
    `stale_latents:flux` -> `stale_latents`), so the card's list counts kinds of problems."""
    parts = flag.split(":")
    return ":".join(parts[:2]) if parts[0] in ("ingest", "sketch", "captions") else parts[0]


def _stats_summary(path: Path) -> str:
    """A short rendering of whatever `stats/attributes.json` holds (its schema belongs to the stats stage)."""
    try:
        doc = json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001
        return f"`stats/attributes.json` could not be read ({type(e).__name__})."
    rows = []
    for k, v in (doc.items() if isinstance(doc, dict) else []):
        if isinstance(v, (int, float, str, bool)) or v is None:
            rows.append([k, v])
        elif isinstance(v, dict) and len(v) <= 24 and all(isinstance(x, int | float | str) for x in v.values()):
            rows.append([k, ", ".join(f"{a}: {round(b, 4) if isinstance(b, float) else b}"
                                      for a, b in v.items())])
        else:
            rows.append([k, f"({type(v).__name__}: see stats/attributes.json)"])
    return _table(["attribute", "value"], rows) if rows else "`stats/attributes.json` is empty."


def _how_to_load(index: dict) -> list[str]:
    train = [s["name"] for s in index["shards"] if s["split"] == "train"]
    urls = (f"shards/train-{{000000..{len(train) - 1:06d}}}.tar" if len(train) > 1
            else "shards/train-000000.tar")
    vae = next(iter(index["vaes"]), None)
    read = (f'    image, meta, z = s["jpg"], s["json"], s["{vae}.latent.npy"]  # uint8 (R, R, 3), dict, float16'
            if vae else '    image, meta = s["jpg"], s["json"]  # uint8 (R, R, 3), dict')
    wds = ["import io, numpy as np, webdataset as wds", "from PIL import Image", "",
           "grey = lambda b: np.asarray(Image.open(io.BytesIO(b)))  # masks and sketches stay single-channel",
           f'ds = wds.WebDataset("{urls}", shardshuffle=100).decode(',
           '    wds.handle_extension("mask.png sketch.png", grey), "rgb8")  # .npy: np.load(allow_pickle=False)',
           "for s in ds:", read]
    hf = ["import json, datasets", "",
          "ds = datasets.load_dataset(\"shards\", split=\"train\")  # this folder (or its hub repo): the card's YAML",
          "# or any subset of the tars, with the features from features.json:",
          'features = datasets.Features.from_dict(json.load(open("shards/features.json")))',
          'ds = datasets.load_dataset("webdataset", data_files={"train": "shards/train-*.tar"}, split="train",',
          "                           features=features)"]
    why = ("Without `features`, `datasets` infers the types from the first five samples of the first tar. "
           "Every sample's `json` has the same keys and types (see the sample schema), but those five must "
           "also have the same fields, and a list empty in all five (`flags`) or a VAE none of them has "
           "cannot be typed from them: pass `features`, or load the folder (its card carries them).")
    return ["## How to load", "",
            "`index.json` lists every shard with its sample count, bytes and sha256 (`facecurate verify` checks "
            "them, and every field of every sample). Nothing needs pickle.", "", "WebDataset:", "", "```python",
            *wds, "```", "", "Hugging Face `datasets`:", "", "```python", *hf, "```", "", why, "",
            "The facecurate trainer reads this folder directly (`train/data.py`); "
            "`facecurate export RUN --format mmface-dit` writes the folder layout of the public MMFace-DiT trainer."]


def render(out: Path, index: dict, rows: pa.Table | list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(README.md text, features) for the shards of the run in `out`."""
    path = out / "manifest.resolved.yaml"
    resolved = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    name = (resolved.get("manifest") or {}).get("name") or out.name
    counts = Counts.of(rows)
    res = index["resolution"] or 0
    features = hf_features({v: int(m.get("channels") or 0) for v, m in index["vaes"].items()}, res)
    present = Counter()
    for f, n in counts.fields.items():
        present[f.split(".")[0]] += n
    have = [w for w, f in (("19-class masks", "mask"), ("sketches", "sketch"), ("captions", "captions"))
            if present[f]] + ([f"{', '.join(index['vaes'])} VAE latents"] if index["vaes"] else [])
    kinds = source_kinds(resolved, counts.sources)
    faces = (out / "faces" / "report.json").exists()
    parts = [_header(name, index, counts, kinds, features), "", f"# {md(pretty_name(name))}", "",
             f"{counts.n:,} face images at {res}x{res}" + (f" with {', '.join(have)}" if have else "") +
             f", as WebDataset shards. Made by facecurate {__version__}; the run folder's "
             "`manifest.resolved.yaml` records every setting.", "", "## Splits", "",
             _table(["split", "samples", "shards", "bytes"],
                    [[sp, f"{d['samples']:,}", d["shards"], f"{d['bytes']:,}"]
                     for sp, d in index["splits"].items()]),
             "", f"Left out, by reason (see the shard ledger): {_counts(index['left_out'])}.", "",
             *_schema(index, counts), "", *_models(resolved, index), "",
             *_licenses(counts, kinds, faces), "", *_personal(counts, kinds, faces), "",
             *_statistics(out, counts), "", *_how_to_load(index), ""]
    return "\n".join(parts), features


def write_card(out: Path, index: dict, rows: pa.Table | list[dict[str, Any]]) -> None:
    """Write `shards/features.json` and `shards/README.md`."""
    text, features = render(out, index, rows)
    atomic_write_bytes(out / "shards" / "features.json", (json.dumps(features, indent=1) + "\n").encode())
    atomic_write_bytes(out / "shards" / "README.md", text.encode())
