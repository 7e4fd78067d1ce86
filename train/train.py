"""Train MMFace-DiT on facecurate shards: ``facecurate train CONFIG`` (or ``torchrun ... -m train.train CONFIG``).

One top-down loop in the spirit of nanoGPT: read the config, find the shards, build the frozen CLIP text
encoder and the network, AdamW (8-bit when bitsandbytes is importable) with warmup + cosine, bf16 autocast,
gradient accumulation and clipping, EMA, optional gradient checkpointing and ``torch.compile``, DDP under
torchrun. Checkpoints are folders of safetensors plus ``state.json``:

    OUT/ckpt/step_000200/{model.safetensors, ema.safetensors, optim.safetensors, state.json}
    OUT/ckpt/latest          the name of the newest complete checkpoint
    OUT/metrics.jsonl        one line per step: loss, lr, grad norm (rank 0)

Every file is written whole or not at all (`pipeline.data.files`): a checkpoint folder is built under a
temporary name and renamed, `latest` is replaced atomically, and a metrics line is one appended write, so a
kill leaves at most a cut last line, which a resume drops (saying so) with the steps after its checkpoint.

Resume is exact: the model args come from the checkpoint, the optimizer state and data position are
restored, the learning rate is a function of the step, and every step draws its noise and timesteps from a
generator seeded by (seed, rank, step), so the steps after a resume reproduce an uninterrupted run's losses.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pipeline.data.files import append_line, atomic_dir, atomic_write_text, read_jsonl, sweep_beside
from train.config import ConfigError, TrainConfig, load_config
from train.model import MMFaceDiT, MMFaceDiTConfig, count_params, peak_tflops


def setup_distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world) from torchrun's environment; a plain process is rank 0 of 1."""
    if "RANK" not in os.environ:
        return 0, 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size()


def pick_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cuda":  # an explicit index: set_device and the memory counters refuse a bare "cuda"
        return torch.device(f"cuda:{local_rank}")
    return torch.device(spec)


def lr_at(step: int, cfg: TrainConfig, max_steps: int) -> float:
    """Linear warmup to optim.lr, then cosine to optim.min_lr at max_steps (a function of the step: no state)."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = min(1.0, (step - o.warmup_steps) / max(1, max_steps - o.warmup_steps))
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """AdamW with weight decay on matrices and embeddings only; 8-bit through bitsandbytes where possible."""
    o = cfg.optim
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps)
    if o.eight_bit and device.type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(groups, **kw), "adamw8bit"
        except ImportError:
            pass  # fall back to torch's AdamW below, and say so in the log line
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, fused=fused, **kw), "adamw-fused" if fused else "adamw"


def step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0] >> 1)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters(), strict=True)],
                         1.0 - decay)


# ---- checkpoints: safetensors + json, written under a temporary name and renamed --------------------------
def _optim_to_flat(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, extra = {}, {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                extra[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "extra": extra}


def _optim_from_flat(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = defaultdict(dict)
    for name, v in [*tensors.items(), *meta["extra"].items()]:
        pid, k = name.split(".", 1)
        state[int(pid)][k] = v
    return {"state": dict(state), "param_groups": meta["param_groups"]}


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = out_dir / "ckpt" / "latest"
    if not pointer.is_file():
        return None
    path = out_dir / "ckpt" / pointer.read_text().strip()
    return path if (path / "state.json").is_file() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from itself, a run folder or a ``ckpt`` folder (the latest one in those)."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    for root in (path, path.parent):
        found = latest_checkpoint(root)
        if found:
            return found
    raise ValueError(f"{path} is not a checkpoint folder and holds no ckpt/latest")


def save_checkpoint(out_dir: Path, step: int, model, ema, optimizer, state: dict, keep_last: int = 0) -> Path:
    from safetensors.torch import save_file

    root = out_dir / "ckpt"
    name = f"step_{step:06d}"
    final = root / name
    with atomic_dir(final) as tmp:  # the folder appears whole under its name, or not at all
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
        tensors, meta = _optim_to_flat(optimizer.state_dict())
        save_file(tensors, str(tmp / "optim.safetensors"))
        (tmp / "state.json").write_text(json.dumps({**state, "optimizer": meta}, indent=1))  # written last
    atomic_write_text(root / "latest", name)  # only after the folder it names is complete
    if keep_last > 0:
        for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


# ---- the run ----------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = True, stop_after: int | None = None, log=print) -> dict:
    """Run (or resume) training; returns a summary. `stop_after` ends the loop early without a checkpoint,
    like a crash (tests use it to check that resuming is exact)."""
    from safetensors.torch import load_file

    from train import data as D
    from train.objectives import longtail_class_weights, make_objective

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer runs inside forked workers
    rank, local_rank, world = setup_distributed()
    master = rank == 0
    device = pick_device(cfg.train.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out_dir = Path(cfg.train.out_dir)
    ckpt = latest_checkpoint(out_dir)
    if ckpt is not None and not resume:
        raise ConfigError(f"{out_dir} already holds checkpoints ({ckpt.name}): resume, or set train.out_dir elsewhere")
    state = load_checkpoint_state(ckpt) if ckpt else None

    # data, text encoder, class weights
    shards = D.find_shards(cfg.data.shards, cfg.data.split)
    meta = D.probe(shards, cfg.data.vae)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    try:
        encoder = D.TextEncoder(cfg.data.text_encoder, device, torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32)
    except OSError as e:  # not a folder, not on the hub or offline
        raise ConfigError(f"data.text_encoder: cannot load {cfg.data.text_encoder!r}: {str(e).splitlines()[0]}") from None
    if cfg.data.text_cache:
        if master:
            D.precompute_text(shards, encoder, Path(cfg.data.text_cache))
        if world > 1:
            dist.barrier()
    class_weights, counts, o = None, cfg.objective.class_counts, cfg.objective
    if o.longtail:  # EC²Face T_c: the config's, the checkpoint's (a resume keeps its weights), else attributes.json
        if counts is not None:
            source = "objective.class_counts"
        elif state and state.get("class_counts"):
            counts, source = state["class_counts"], f"the checkpoint {ckpt.name}"
        else:  # stats/attributes.json beside or above the shards; the shards' own counts as the fallback
            counts, source = D.longtail_counts(o.longtail_weights, cfg.data.shards, shards, cfg.data.split)
        power = (2 if o.longtail_mode == "eq11" else 1) if o.longtail_normalize else None
        class_weights = longtail_class_weights(counts, o.longtail_clamp, power)
        if master:
            log(f"EC²Face weights ({o.longtail_mode}, clamp {o.longtail_clamp}, "
                f"{'normalised' if power else 'not normalised'}) from {source}: "
                f"{class_weights.min():.3g}..{class_weights.max():.3g}")
            before = state["config"]["objective"] if state else {}
            if before.get("longtail") and "longtail_mode" not in before:
                log("warning: the checkpoint predates Eq. 11 and trained with linear, unclamped weights; to keep its "
                    "objective set objective.longtail_mode=linear longtail_clamp=null longtail_normalize=false")

    # the network: architecture from the checkpoint when resuming (nanoGPT), else from the config
    if state:
        model_cfg = MMFaceDiTConfig(**state["model_args"])
    else:
        m = cfg.model
        overrides = {k: v for k, v in (("depth", m.depth), ("hidden_size", m.hidden_size), ("num_heads", m.num_heads))
                     if v is not None}
        model_cfg = MMFaceDiTConfig.from_size(m.size, rope=m.rope, patch_size=m.patch_size, mlp_ratio=m.mlp_ratio,
                                              latent_channels=meta["latent_shape"][0], text_dim=encoder.dim, **overrides)
    if model_cfg.latent_channels != meta["latent_shape"][0] or model_cfg.text_dim != encoder.dim:
        raise ConfigError(f"the model takes {model_cfg.latent_channels}-channel latents and {model_cfg.text_dim}-wide text; "
                          f"the data has {meta['latent_shape'][0]} ({cfg.data.vae}) and {encoder.dim} ({cfg.data.text_encoder})")
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank
    raw = MMFaceDiT(model_cfg).to(device)
    raw.grad_ckpt = cfg.train.grad_ckpt
    if cfg.model.init_from and state:  # the checkpoint's weights win: init_from is only where a run starts
        if master:
            log(f"resuming from {ckpt.name}: model.init_from ({cfg.model.init_from}) is ignored")
    elif cfg.model.init_from:  # before the EMA copy, so both start from these weights
        from train.convert import init_from

        note = init_from(raw, cfg.model.init_from, cfg.data.latent_convention)
        if master:
            log(note)
    ema = copy.deepcopy(raw).requires_grad_(False).eval()
    optimizer, optim_name = make_optimizer(raw, cfg, device)
    step, epoch, batch_in_epoch, samples_seen = 0, 0, 0, 0
    if state:
        raw.load_state_dict(load_file(str(ckpt / "model.safetensors"), device=str(device)))
        ema.load_state_dict(load_file(str(ckpt / "ema.safetensors"), device=str(device)))
        optimizer.load_state_dict(_optim_from_flat(load_file(str(ckpt / "optim.safetensors")), state["optimizer"]))
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        samples_seen = state["samples_seen"]
        before = state["config"]["data"]
        if (state.get("world", 1), before["batch_size"], before["num_workers"]) != (
                world, cfg.data.batch_size, cfg.data.num_workers):
            log("warning: world size, batch size or workers changed since the checkpoint: the data order differs")
    model = torch.compile(raw) if cfg.train.compile else raw
    if world > 1:
        # the last block's text stream after attention never reaches the output: its parameters get no gradient
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None, find_unused_parameters=True)
    objective = make_objective(cfg.objective.kind, **{k: getattr(cfg.objective, k) for k in
                               ("t_sampling", "logit_mean", "logit_std", "min_snr_gamma", "prediction_type",
                                "longtail_mode")})
    consistency = None
    if cfg.objective.consistency is not None:  # EC²Face's consistency loss: frozen VAE, CLIP and parser
        from train.consistency import ConsistencyLoss

        consistency = ConsistencyLoss(cfg.objective.consistency, meta["vae"], cfg.data.latent_convention, device,
                                      grad_ckpt=cfg.train.grad_ckpt)

    ds = D.ShardStream(
        shards, cfg.data.vae, cfg.data.batch_size, cfg.data.num_workers, cfg.train.seed, rank, world,
        cfg.data.shuffle_buffer, cfg.data.latent_convention, cfg.data.text_dropout, cfg.data.mask_dropout,
        cfg.data.sketch_dropout, cfg.data.sketch_prob, tokenizer=encoder.tokenizer,
        text_cache=cfg.data.text_cache, class_weights=class_weights, max_length=encoder.max_length,
        consistency=consistency is not None)
    per_epoch = ds.batches_per_epoch()
    if per_epoch == 0:
        raise ConfigError(f"data.batch_size {cfg.data.batch_size} x {max(cfg.data.num_workers, 1)} workers x {world} ranks "
                          f"is more than the {sum(s.samples for s in shards)} samples: lower the batch size or workers")
    accum = cfg.train.grad_accum
    max_steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * per_epoch / accum)

    def batches():
        nonlocal epoch, batch_in_epoch
        while True:
            ds.set_position(epoch, batch_in_epoch)
            for b in D.make_loader(ds, cfg.data.num_workers, pin_memory=device.type == "cuda"):
                batch_in_epoch += 1
                yield b
            epoch, batch_in_epoch = epoch + 1, 0

    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    attn_ctx = contextlib.nullcontext
    if cfg.train.attn != "auto":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                   "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[cfg.train.attn]
        attn_ctx = lambda: sdpa_kernel(backend)  # noqa: E731
    generator = torch.Generator(device=device)
    lat = meta["latent_shape"]
    flops = model_cfg.train_flops(lat[1], lat[2], encoder.max_length)
    peak, peak_from = peak_tflops(device, cfg.train.peak_tflops)
    global_batch = cfg.data.batch_size * accum * world
    metrics_path = out_dir / "metrics.jsonl"
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        import yaml

        for folder in (out_dir, out_dir / "ckpt"):
            sweep_beside(folder)  # temporaries of a killed run (a half-written checkpoint folder)
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if metrics_path.exists():  # drop lines of steps after the checkpoint we resume from (a crashed tail)
            records, cut = read_jsonl(metrics_path)
            if cut:
                log(f"{metrics_path}: dropped {cut} line(s) a killed run left unfinished")
            kept = [r for r in records if isinstance(r.get("step"), int) and r["step"] <= step]
            atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        log(f"MMFace-DiT {model_cfg.depth}x{model_cfg.hidden_size} ({count_params(raw) / 1e6:.2f}M params, rope {model_cfg.rope}) "
            f"| {cfg.objective.kind} | {sum(s.samples for s in shards):,} samples in {len(shards)} shards, "
            f"{per_epoch} batches/epoch/rank | global batch {global_batch} | {optim_name} | "
            f"{'bf16' if bf16 else 'fp32'} on {device}{f' x{world}' if world > 1 else ''} | "
            f"{'resuming from ' + ckpt.name if ckpt else 'from scratch'} | {max_steps} steps")
        if peak:
            log(f"MFU against {peak:.3g} TFLOP/s ({peak_from}); {flops / 1e9:.2f} GFLOP per training sample")

    def run_state() -> dict:
        return {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "samples_seen": samples_seen,
                "world": world, "model_args": model_cfg.to_dict(), "config": cfg.to_dict(), "data": meta,
                "text_encoder": cfg.data.text_encoder, "latent_convention": cfg.data.latent_convention,
                "class_counts": counts, "optimizer_kind": optim_name,
                "class_weights": None if class_weights is None else class_weights.tolist(),
                "torch": torch.__version__}

    it = batches()
    pending: list[tuple[int, torch.Tensor, float, torch.Tensor]] = []
    history: list[float] = []
    t_log, steps_since, t_start, start_step = time.perf_counter(), 0, time.perf_counter(), step

    def flush() -> None:
        nonlocal pending
        if not pending or not master:
            pending = []
            return
        values = torch.stack([torch.stack([loss, gn]) for _, loss, _, gn in pending]).tolist()  # one sync
        for (s, _, lr, _), (loss, gn) in zip(pending, values, strict=True):
            append_line(metrics_path, json.dumps({"step": s, "loss": loss, "lr": lr, "grad_norm": gn}))
            history.append(loss)
        pending = []

    evaluator, rng_devices = None, [device.index] if device.type == "cuda" else []
    if cfg.train.eval_every and master:  # rank 0 scores the EMA weights; the other ranks wait at their next all-reduce
        from train.evaluate import TrainingEval

        with torch.random.fork_rng(devices=rng_devices):  # scoring leaves training's random streams alone
            evaluator = TrainingEval(cfg, encoder, device, log)

    model.train()
    while step < max_steps:
        lr = lr_at(step, cfg, max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        generator.manual_seed(step_seed(cfg.train.seed, rank, step))
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            batch = next(it)
            c = {"cond": batch["cond"].to(device), "modality": batch["modality"].to(device),
                 "drop_text": batch["drop_text"].to(device)}
            if "input_ids" in batch:
                c["text"], c["pooled"] = encoder.encode_ids(batch["input_ids"])
            else:
                c["text"], c["pooled"] = batch["text"].to(device), batch["pooled"].to(device)
            weight = batch["weight"].to(device) if "weight" in batch else None
            extra = consistency.bind(batch) if consistency is not None else None
            sync = contextlib.nullcontext() if world == 1 or micro == accum - 1 else model.no_sync()
            with sync, attn_ctx():  # backward too: checkpointed blocks recompute attention there
                with autocast:
                    loss = objective.loss(model, batch["latent"].to(device), c, weight, generator, extra) / accum
                loss.backward()
            loss_sum += loss.detach()
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_ema(ema, raw, cfg.train.ema_decay)
        step += 1
        steps_since += 1
        samples_seen += global_batch
        pending.append((step, loss_sum, lr, grad_norm.detach().float()))
        if step % cfg.train.log_every == 0 or step == max_steps:
            flush()
            dt = time.perf_counter() - t_log
            sps = steps_since * global_batch / dt
            mfu = f" | MFU {100 * flops * sps / (peak * 1e12 * world):.1f}%" if peak else ""
            if master and history:
                recent = history[-steps_since:]
                log(f"step {step:>6}/{max_steps} | loss {sum(recent) / len(recent):.4f} | lr {lr:.2e} | "
                    f"grad {float(grad_norm):.3f} | {sps:.1f} samples/s{mfu} | epoch {epoch}")
            t_log, steps_since = time.perf_counter(), 0
        if stop_after is not None and step >= stop_after:
            flush()
            break
        if step % cfg.train.ckpt_every == 0 or step == max_steps:
            flush()
            if master:
                save_checkpoint(out_dir, step, raw, ema, optimizer, run_state(), cfg.train.keep_last)
            if world > 1:
                dist.barrier()
        if evaluator is not None and step % cfg.train.eval_every == 0:
            flush()
            with torch.random.fork_rng(devices=rng_devices):
                figures = evaluator(step, ema, objective)
            append_line(metrics_path, json.dumps({"step": step, "eval": figures}))
            t_log = time.perf_counter()  # the next progress line times training only
    flush()
    elapsed = time.perf_counter() - t_start
    summary = {"steps": step, "steps_this_run": step - start_step, "samples_seen": samples_seen,
               "seconds": round(elapsed, 2), "samples_per_s": round((step - start_step) * global_batch / max(elapsed, 1e-9), 2),
               "first_loss": history[0] if history else None, "last_loss": history[-1] if history else None,
               "checkpoint": str(latest_checkpoint(out_dir) or ""), "params": count_params(raw)}
    if master:
        first, last = summary["first_loss"], summary["last_loss"]
        losses = f"loss {first:.4f} -> {last:.4f}" if history else "no steps run"
        log(f"done: {summary['steps_this_run']} steps in {elapsed:.1f} s ({summary['samples_per_s']} samples/s), "
            f"{losses}; checkpoint {summary['checkpoint'] or 'none'}")
    if world > 1:
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m train.train CONFIG [key=value ...]`` for torchrun; the CLI is ``facecurate train``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: torchrun --nproc_per_node=N -m train.train CONFIG [key=value ...]", file=sys.stderr)
        return 2
    try:
        cfg = load_config(argv[0], argv[1:])
        train(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
