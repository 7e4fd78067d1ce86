"""Streaming WebDataset shards into MMFace-DiT batches: deterministic, resumable, never unpickling.

Order. Each epoch permutes the shards with (seed, epoch) and deals them to the G = world x workers readers
(when there are fewer shards than readers, every reader walks all shards and keeps every G-th sample). Each
reader shuffles its stream through a buffer driven by (seed, epoch, reader). Every reader yields the same
number of whole batches, so the DataLoader's round-robin over workers is strict and the position in an
epoch is one number: the batches consumed. Resuming at batch b, each reader skips the batches it had produced;
the shuffle is simulated on sample indices, so skipped samples are never read (skipped shards are never
opened) and the samples still in the buffer are read again.

Per sample (a numpy Generator seeded by seed, epoch and the key, so choices survive any skipping): one of
the captions; the mask or the sketch latent (50/50, the other one when one is missing, zeros when both
are), with its modality flag (0 mask, 1 sketch); 5% each of text, mask and sketch dropout (empty caption
+ null pooled vector; zero condition latent). Latents are the VAE means stored in the shards, put on the
training scale by the ``diffusers`` ((z - shift) * scale) or ``mmface`` (z * scale) convention.

Fields are decoded here, by extension, with ``np.load(allow_pickle=False)``, ``json`` and PIL: nothing in a
shard can run code. Text is tokenized in the workers and encoded by the frozen CLIP text encoder on the
device (``TextEncoder``), or read from a cache of precomputed states (``precompute_text``).
"""

from __future__ import annotations

import glob
import io
import json
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.data.files import atomic_write_bytes, atomic_write_text, sweep_beside
from train.config import ConfigError
from train.objectives import longtail_weight_map

MODALITIES = ("mask", "sketch")  # modality flag 0, 1


@dataclass(frozen=True)
class Shard:
    path: Path
    samples: int


def _split_name(name: str) -> tuple[str, str]:
    """WebDataset naming: the key is the path up to the first dot of the basename, the rest the extension."""
    head, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), ext


def iter_samples(path: Path, wanted: Callable[[int], bool] | None = None,
                 fields: frozenset[str] | None = None) -> Iterator[tuple[int, str, dict[str, bytes] | None]]:
    """(index, key, {ext: bytes}) for each sample of a tar; bytes are read only for wanted samples and fields."""
    with tarfile.open(path, "r:") as tf:  # seekable mode: members we do not read are seeked over
        index, key, data, keep = -1, None, {}, False
        while (member := tf.next()) is not None:
            if not member.isfile():
                continue
            k, ext = _split_name(member.name)
            if k != key:
                if key is not None:
                    yield index, key, (data if keep else None)
                index, key, data = index + 1, k, {}
                keep = wanted is None or wanted(index)
            if keep and (fields is None or ext in fields):
                data[ext] = tf.extractfile(member).read()
            tf.members = []  # do not keep every TarInfo of a large shard in memory
        if key is not None:
            yield index, key, (data if keep else None)


def count_samples(path: Path) -> int:
    return sum(1 for _ in iter_samples(path, wanted=lambda i: False))


_RESOLVED: set[str] = set()  # run folders already said to stand for their shards (said once per process)


def shard_folder(root: Path, log: Callable[[str], None] = print) -> Path:
    """The shard folder a folder stands for: itself (``index.json`` or tars), or a run folder's ``OUT/shards``
    (one line in the log says so); a folder with neither is a one-line ConfigError saying how to make one."""
    if (root / "index.json").is_file() or any(root.glob("*.tar")):
        return root
    if (root / "shards" / "index.json").is_file():
        if str(root) not in _RESOLVED:
            _RESOLVED.add(str(root))
            log(f"{root} is a run folder: reading its shards, {root / 'shards'}")
        return root / "shards"
    if (root / "shards").is_dir():
        raise ConfigError(f"{root / 'shards'} has no index.json (it is written last, so the shard stage has "
                          f"not finished there): run `facecurate shard {root}`")
    raise ConfigError(f"{root} holds no shards: a shard folder has index.json and <split>-NNNNNN.tar files, "
                      "as `facecurate shard OUT` writes them to OUT/shards; make them with `facecurate run "
                      "MANIFEST` (or `facecurate latents OUT && facecurate shard OUT`), then point "
                      "data.shards at OUT or OUT/shards")


def find_shards(spec: str | Path, split: str = "train", log: Callable[[str], None] = print) -> list[Shard]:
    """Shards of a split: from ``index.json`` in a folder, else ``<split>-*.tar`` there, or a file/glob; a run
    folder stands for its ``shards`` folder (``shard_folder``)."""
    spec = str(spec)
    root = Path(spec)
    if root.is_dir():
        root = shard_folder(root, log)
        index = root / "index.json"
        if index.is_file():
            entries = json.loads(index.read_text())["shards"]
            shards = [Shard(root / e["name"], int(e["samples"])) for e in entries if e.get("split", split) == split]
        else:
            shards = [Shard(p, count_samples(p)) for p in sorted(root.glob(f"{split}-*.tar"))]
    else:
        shards = [Shard(Path(p), count_samples(Path(p))) for p in sorted(glob.glob(spec))]
    shards = [s for s in shards if s.samples > 0]
    if not shards:
        raise ConfigError(f"no {split!r} shards with samples found at {spec}")
    missing = [str(s.path) for s in shards if not s.path.is_file()]
    if missing:
        raise ConfigError(f"index.json lists shards that do not exist: {', '.join(missing[:3])}")
    return shards


def load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: refused
        raise ValueError(f"{where}: not a plain numeric .npy ({e})") from None
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{where}: expected a numeric array, got dtype {arr.dtype}")
    return arr


def probe(shards: list[Shard], vae: str) -> dict:
    """The first sample's metadata: VAE id/factors/channels, resolution and latent shape (C, h, w)."""
    for _, key, f in iter_samples(shards[0].path, wanted=lambda i: i == 0):
        if f is None:
            break
        meta = json.loads(f["json"])
        if vae not in meta.get("vae", {}):
            raise ConfigError(missing_vae(shards[0].path.parent, vae, list(meta.get("vae", {}))))
        lat = load_npy(f[f"{vae}.latent.npy"], f"{key}: {vae}.latent.npy")
        return {"vae": meta["vae"][vae], "resolution": meta.get("resolution"), "latent_shape": list(lat.shape)}
    raise ValueError(f"{shards[0].path} holds no samples")


def missing_vae(folder: Path, vae: str, found: list[str]) -> str:
    """What to do about shards without `vae`'s latents: make them, or train on a VAE the shards have
    (``index.json``'s ``vaes``, else the first sample's)."""
    if (folder / "index.json").is_file():  # else a folder of tars without an index: the sample's list
        found = list(json.loads((folder / "index.json").read_text()).get("vaes") or found)
    out = folder.parent if (folder.parent / "index.parquet").is_file() else Path("OUT")  # the run behind them
    use = " (set data.vae to one of them), or" if found else ";"
    return (f"data.vae: the shards have no {vae!r} latents; they have: {', '.join(found) or 'none'}{use} run "
            f"`facecurate latents {out}` (stages.latents.models must include {vae}), then "
            f"`facecurate shard {out}`")


def dataset_class_counts(shards: list[Shard]) -> list[int]:
    """Sum of every sample's ``class_pixels`` (the EC²Face T_c), one pass over the json fields only."""
    total = np.zeros(19, np.int64)
    for s in shards:
        for _, _, f in iter_samples(s.path, fields=frozenset({"json"})):
            total += np.asarray(json.loads(f["json"]).get("class_pixels", [0] * 19), np.int64)
    return total.tolist()


def find_attributes(spec: str | Path, depth: int = 2) -> Path | None:
    """The stats stage's ``stats/attributes.json`` for shards at `spec`: in the shard folder (the folder of a
    tar or glob) or up to `depth` folders above it (a run's ``OUT/shards`` has it at ``OUT/stats``)."""
    root = Path(spec)
    if not root.is_dir():
        root = root.parent
    for folder in [root, *root.resolve().parents][: depth + 1]:
        if (folder / "stats" / "attributes.json").is_file():
            return folder / "stats" / "attributes.json"
    return None


def longtail_counts(source: str, spec: str | Path, shards: list[Shard], split: str) -> tuple[list[int], str]:
    """EC²Face T_c and where they came from: ``auto`` (attributes.json beside or above the shards, else the
    shards' ``class_pixels``), a path to an attributes.json, or ``shards``."""
    from pipeline.data.attributes import document_counts

    path = find_attributes(spec) if source == "auto" else None if source == "shards" else Path(source)
    if path is None:
        why = "asked for" if source == "shards" else f"no stats/attributes.json beside or above {spec}"
        return dataset_class_counts(shards), f"the shards' class_pixels ({why})"
    try:
        counts, counted = document_counts(json.loads(path.read_text()), split)
    except (OSError, ValueError) as e:  # a JSONDecodeError is a ValueError
        raise ConfigError(f"objective.longtail_weights: cannot read class counts from {path}: {e}") from None
    return counts, f"{path} (split {counted})"


def shuffle_order(n: int, buffer: int, rng: np.random.Generator) -> list[int]:
    """The order a streaming shuffle buffer of this size emits items 0..n-1 in (a buffer >= n: a permutation)."""
    if buffer <= 1:
        return list(range(n))
    picks = rng.integers(0, buffer, size=max(n - buffer, 0)).tolist()
    buf, out = list(range(min(buffer, n))), []
    for i, j in zip(range(buffer, n), picks, strict=True):
        out.append(buf[j])
        buf[j] = i
    return out + [buf[i] for i in rng.permutation(len(buf))]


def latent_to_model(z: np.ndarray, vae_meta: dict, convention: str) -> np.ndarray:
    """Stored VAE mean -> training scale: diffusers (z - shift) * scale, or mmface z * scale (no shift)."""
    scale = float(vae_meta["scaling_factor"])
    shift = float(vae_meta.get("shift_factor") or 0.0) if convention == "diffusers" else 0.0
    return ((z.astype(np.float32) - shift) * scale).astype(np.float32)


def model_to_latent(x: torch.Tensor, vae_meta: dict, convention: str) -> torch.Tensor:
    """Inverse of ``latent_to_model``: what the VAE decoder takes."""
    shift = float(vae_meta.get("shift_factor") or 0.0) if convention == "diffusers" else 0.0
    return x / float(vae_meta["scaling_factor"]) + shift


class ShardStream(IterableDataset):
    """Samples of the shards for one rank, in a deterministic order that resumes mid-epoch.

    Args:
        shards: the split's shards (``find_shards``).
        vae: VAE short name in the shards.
        batch_size: samples per batch (each reader yields whole batches).
        num_workers: DataLoader workers that will read this dataset (0 = the main process).
        seed: data seed.
        rank: this process's rank.
        world: number of processes.
        shuffle_buffer: per-reader shuffle buffer in samples.
        convention: latent convention, ``diffusers`` or ``mmface``.
        text_dropout: probability of the empty caption.
        mask_dropout: probability of a zero mask latent.
        sketch_dropout: probability of a zero sketch latent.
        sketch_prob: probability of choosing the sketch.
        tokenizer: CLIP tokenizer (ids are returned) unless ``text_cache`` is given.
        text_cache: folder written by ``precompute_text`` (hidden states are returned).
        class_weights: EC²Face per-class weights; when given a per-position ``weight`` map is returned.
        consistency: also return what the consistency loss needs: ``caption`` (the text the sample is
            conditioned on, "" when dropped), ``label`` (mask.png, zeros without one), ``has_label`` and
            ``has_cond`` (a mask or sketch latent is given, not dropped).
    """

    def __init__(self, shards: list[Shard], vae: str, batch_size: int, num_workers: int = 0, seed: int = 0,
                 rank: int = 0, world: int = 1, shuffle_buffer: int = 1000, convention: str = "diffusers",
                 text_dropout: float = 0.05, mask_dropout: float = 0.05, sketch_dropout: float = 0.05,
                 sketch_prob: float = 0.5, tokenizer=None, text_cache: str | Path | None = None,
                 class_weights: np.ndarray | None = None, max_length: int = 77, consistency: bool = False):
        super().__init__()
        if tokenizer is None and text_cache is None:
            raise ValueError("ShardStream needs a tokenizer or a text_cache")
        self.shards, self.vae, self.batch_size = shards, vae, batch_size
        self.workers, self.seed, self.rank, self.world = max(num_workers, 1), seed, rank, world
        self.buffer, self.convention = shuffle_buffer, convention
        self.text_dropout, self.mask_dropout, self.sketch_dropout = text_dropout, mask_dropout, sketch_dropout
        self.sketch_prob, self.tokenizer, self.max_length = sketch_prob, tokenizer, max_length
        self.text_cache = Path(text_cache) if text_cache else None
        self.class_weights, self.consistency = class_weights, consistency
        self.fields = frozenset({"json", "captions.json", f"{vae}.latent.npy", f"{vae}.mask_latent.npy",
                                 f"{vae}.sketch_latent.npy"}
                                | ({"mask.png"} if class_weights is not None or consistency else set()))
        self.epoch, self.start_batch = 0, 0
        self._cache_files: dict[str, object] = {}

    # ---- the plan: which reader reads what, in which order -------------------------------------------
    def _shard_order(self, epoch: int) -> list[int]:
        return np.random.default_rng([self.seed, epoch, 0]).permutation(len(self.shards)).tolist()

    def _stream(self, epoch: int, g: int) -> list[tuple[int, int]]:
        """Reader g's (shard, sample-in-shard) stream before shuffling: its shards, or every G-th sample."""
        readers, order = self.world * self.workers, self._shard_order(epoch)
        if len(self.shards) >= readers:
            return [(s, i) for s in order[g::readers] for i in range(self.shards[s].samples)]
        flat = [(s, i) for s in order for i in range(self.shards[s].samples)]
        return flat[g::readers]

    def batches_per_reader(self, epoch: int = 0) -> int:
        """Whole batches every reader yields per epoch (the smallest reader decides; the rest is dropped)."""
        readers, order = self.world * self.workers, self._shard_order(epoch)
        if len(self.shards) >= readers:
            sizes = [sum(self.shards[s].samples for s in order[g::readers]) for g in range(readers)]
        else:
            total = sum(s.samples for s in self.shards)
            sizes = [len(range(g, total, readers)) for g in range(readers)]
        return min(sizes) // self.batch_size

    def batches_per_epoch(self) -> int:
        """Batches this rank's DataLoader yields per epoch."""
        return self.batches_per_reader(0) * self.workers

    def set_position(self, epoch: int, batch: int) -> None:
        """Start the next iteration at batch `batch` of epoch `epoch` (counted in this rank's batches)."""
        self.epoch, self.start_batch = epoch, batch

    def __iter__(self):
        info = get_worker_info()
        w, n_workers = (info.id, info.num_workers) if info else (0, 1)
        if n_workers != self.workers:
            raise RuntimeError(f"ShardStream was planned for {self.workers} workers, the DataLoader has {n_workers}")
        # The DataLoader asks its workers round-robin from worker 0, so after resuming at batch b worker w plays
        # reader (w + b) % W: the first batch then comes from the reader whose turn it is.
        reader = (w + self.start_batch) % self.workers
        g = self.rank * self.workers + reader
        epoch = self.epoch
        stream = self._stream(epoch, g)
        keep = self.batches_per_reader(epoch) * self.batch_size
        order = shuffle_order(len(stream), self.buffer, np.random.default_rng([self.seed, epoch, 1, g]))[:keep]
        done = len(range(reader, self.start_batch, self.workers)) * self.batch_size  # batches it produced
        need = order[done:]
        samples, held = self._read(stream, set(need)), {}
        for pos in need:
            while pos not in held:
                p, key, fields = next(samples)
                held[p] = (key, fields)
            yield self.decode(*held.pop(pos), epoch=epoch)

    def _read(self, stream: list[tuple[int, int]], needed: set[int]) -> Iterator[tuple[int, str, dict]]:
        """(position in stream, key, fields) of the needed positions, reading each shard once in stream order."""
        runs: list[tuple[int, dict[int, int]]] = []  # consecutive (shard, {sample-in-shard: position})
        for pos, (s, i) in enumerate(stream):
            if not runs or runs[-1][0] != s:
                runs.append((s, {}))
            if pos in needed:
                runs[-1][1][i] = pos
        for s, want in runs:
            if not want:
                continue  # nothing needed from this shard: never opened
            found = 0
            for i, key, fields in iter_samples(self.shards[s].path, wanted=want.__contains__, fields=self.fields):
                if fields is not None:
                    yield want[i], key, fields
                    found += 1
                    if found == len(want):
                        break

    # ---- one sample -------------------------------------------------------------------------------------
    def decode(self, key: str, f: dict[str, bytes], epoch: int = 0) -> dict:
        where = f"sample {key}"
        rng = np.random.default_rng([self.seed, epoch, zlib.crc32(key.encode())])
        u = rng.random(4)  # caption, modality, condition dropout, text dropout: always four draws
        meta = json.loads(f["json"])
        vmeta = meta["vae"][self.vae]
        latent = latent_to_model(load_npy(f[f"{self.vae}.latent.npy"], f"{where}: latent"), vmeta, self.convention)
        avail = [m for m in (0, 1) if f"{self.vae}.{MODALITIES[m]}_latent.npy" in f]
        modality = int(u[1] < self.sketch_prob)
        if avail and modality not in avail:
            modality = avail[0]
        dropout = self.sketch_dropout if modality else self.mask_dropout
        has_cond = modality in avail and u[2] >= dropout
        if has_cond:
            name = f"{self.vae}.{MODALITIES[modality]}_latent.npy"
            cond = latent_to_model(load_npy(f[name], f"{where}: {name}"), vmeta, self.convention)
        else:
            cond = np.zeros_like(latent)  # a dropped (or absent) spatial condition is a zero latent
        captions = json.loads(f.get("captions.json", b"[]"))
        index = int(u[0] * len(captions)) if captions else -1
        drop_text = bool(u[3] < self.text_dropout or index < 0)
        out = {"key": key, "latent": latent, "cond": cond, "modality": modality, "drop_text": drop_text}
        if self.text_cache is not None:
            out["text"], out["pooled"] = self._cached_text(key, None if drop_text else index)
        else:
            caption = "" if drop_text else captions[index]
            out["input_ids"] = np.asarray(self.tokenizer(caption, padding="max_length", max_length=self.max_length,
                                                         truncation=True)["input_ids"], np.int64)
        label = self._label(f.get("mask.png"), where) if self.class_weights is not None or self.consistency else None
        if self.class_weights is not None:
            out["weight"] = self._weight_map(label, latent.shape[1:])
        if self.consistency:
            out["caption"] = "" if drop_text else captions[index]
            out["has_label"], out["has_cond"] = label is not None, has_cond
            out["label"] = label if label is not None else np.zeros([8 * n for n in latent.shape[1:]], np.uint8)
        return out

    @staticmethod
    def _label(png: bytes | None, where: str) -> np.ndarray | None:
        if png is None:
            return None
        from PIL import Image

        label = np.array(Image.open(io.BytesIO(png)))  # a writable copy: the DataLoader makes a tensor of it
        if label.ndim != 2:
            raise ValueError(f"{where}: mask.png must be a single-channel label map, got shape {label.shape}")
        return label

    def _weight_map(self, label: np.ndarray | None, latent_hw) -> np.ndarray:
        if label is None:
            return np.ones(latent_hw, np.float32)  # no mask: unweighted
        return longtail_weight_map(label, self.class_weights, tuple(latent_hw)).astype(np.float32)

    def _cached_text(self, key: str, index: int | None) -> tuple[np.ndarray, np.ndarray]:
        from safetensors import safe_open

        name = "empty" if index is None else self._shard_of(key)
        if name not in self._cache_files:
            self._cache_files[name] = safe_open(str(self.text_cache / f"{name}.safetensors"), framework="np")
        f = self._cache_files[name]
        if index is None:
            return f.get_tensor("hidden").astype(np.float32), f.get_tensor("pooled").astype(np.float32)
        return (f.get_slice(f"{key}/hidden")[index].astype(np.float32),
                f.get_slice(f"{key}/pooled")[index].astype(np.float32))

    def _shard_of(self, key: str) -> str:
        index = self.__dict__.setdefault("_key_to_shard", {})
        if not index:
            index.update(json.loads((self.text_cache / "keys.json").read_text()))
        return index[key]


def make_loader(ds: ShardStream, num_workers: int, pin_memory: bool = False) -> DataLoader:
    return DataLoader(ds, batch_size=ds.batch_size, num_workers=num_workers, drop_last=True, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=4 if num_workers else None)


def from_pretrained_any(cls, source: str | Path, subfolder: str, **kw):
    """``cls.from_pretrained`` on a folder (itself or its `subfolder`) or a hub id (with `subfolder` first)."""
    path = Path(source)
    if path.is_dir():
        return cls.from_pretrained(path / subfolder if (path / subfolder).is_dir() else path, **kw)
    try:
        return cls.from_pretrained(str(source), subfolder=subfolder, **kw)
    except OSError:
        return cls.from_pretrained(str(source), **kw)


class TextEncoder:
    """The frozen CLIP text encoder: penultimate hidden states (no final layer norm) and the pooled output.

    Args:
        source: hub id of a diffusers pipeline (``stabilityai/stable-diffusion-2-1-base``: its ``tokenizer``
            and ``text_encoder`` subfolders) or a local folder with both.
        device: where the encoder runs.
        dtype: its weights' dtype.
    """

    def __init__(self, source: str | Path, device="cpu", dtype=torch.float32):
        from transformers import CLIPTextModel, CLIPTokenizer

        self.source = str(source)
        self.tokenizer = from_pretrained_any(CLIPTokenizer, source, "tokenizer")
        self.model = from_pretrained_any(CLIPTextModel, source, "text_encoder").to(device, dtype)
        self.model.eval().requires_grad_(False)
        self.dim = self.model.config.hidden_size
        self.max_length = self.model.config.max_position_embeddings
        self.device = torch.device(device)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                              return_tensors="pt")["input_ids"]

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(ids.to(self.device), output_hidden_states=True)
        return out.hidden_states[-2].float(), out.pooler_output.float()

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_ids(self.tokenize(texts))


def precompute_text(shards: list[Shard], encoder: TextEncoder, out_dir: Path, batch_size: int = 64) -> None:
    """Write every caption's CLIP states: ``<shard>.safetensors`` with ``<key>/hidden`` (n, 77, D) and
    ``<key>/pooled`` (n, D) in float16, ``empty.safetensors`` for the empty caption, ``keys.json``.

    Every file is written under a temporary name and renamed, so an interrupted pass resumes with the
    shards it had finished.
    """
    from safetensors.numpy import save

    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_beside(out_dir)  # what a killed pass left half-written
    marker = out_dir / "encoder.json"
    expected = {"text_encoder": encoder.source, "dim": encoder.dim}
    if marker.exists() and json.loads(marker.read_text()) != expected:
        raise ValueError(f"{out_dir} holds states of {json.loads(marker.read_text())}, not {expected}")
    atomic_write_text(marker, json.dumps(expected))
    keys: dict[str, str] = {}
    for s in shards:
        name = s.path.stem
        target = out_dir / f"{name}.safetensors"
        samples = [(k, json.loads(f.get("captions.json", b"[]")))
                   for _, k, f in iter_samples(s.path, fields=frozenset({"captions.json"}))]
        keys.update({k: name for k, _ in samples})
        if target.exists():
            continue
        flat = [c for _, caps in samples for c in caps]
        hidden, pooled = [], []
        for i in range(0, len(flat), batch_size):
            h, p = encoder.encode(flat[i : i + batch_size])
            hidden.append(h.half().cpu().numpy())
            pooled.append(p.half().cpu().numpy())
        hidden_all = np.concatenate(hidden) if hidden else np.zeros((0, encoder.max_length, encoder.dim), np.float16)
        pooled_all = np.concatenate(pooled) if pooled else np.zeros((0, encoder.dim), np.float16)
        tensors, at = {}, 0
        for k, caps in samples:
            tensors[f"{k}/hidden"] = np.ascontiguousarray(hidden_all[at : at + len(caps)])
            tensors[f"{k}/pooled"] = np.ascontiguousarray(pooled_all[at : at + len(caps)])
            at += len(caps)
        atomic_write_bytes(target, save(tensors))
    h, p = encoder.encode([""])
    atomic_write_bytes(out_dir / "empty.safetensors",
                       save({"hidden": h[0].half().cpu().numpy(), "pooled": p[0].half().cpu().numpy()}))
    atomic_write_text(out_dir / "keys.json", json.dumps(keys))

