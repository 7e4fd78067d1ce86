"""The trainer's commands for the ``facecurate`` CLI: ``train``, ``sample`` and ``convert-checkpoint``
(``register(app)`` adds them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from train.config import ConfigError


def train_command(
    config: Annotated[Path, typer.Argument(help="Training config YAML (see manifests/train/).", show_default=False)],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="Override a config value: KEY=VALUE (dotted key, YAML value). Repeatable.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume/--no-resume",
        help="Continue from OUT/ckpt/latest when it exists. --no-resume refuses a run folder that has checkpoints.")] = True,
) -> None:
    """Train MMFace-DiT on facecurate shards (rectified flow or DDPM + Min-SNR), resuming where it stopped.

    Prints a progress line every train.log_every steps (loss, lr, grad norm, samples/s, MFU) and a summary.
    Checkpoints: OUT/ckpt/step_NNNNNN/{model,ema,optim}.safetensors + state.json, OUT/ckpt/latest.
    Resuming is exact: the next steps' losses equal an uninterrupted run's. Several GPUs: run
    `torchrun --nproc_per_node=8 -m train.train CONFIG key=value ...` (DDP).

    **Examples**

    ```
    # the tiny CPU config on the demo shards (make demo first)
    facecurate train manifests/train/tiny.yaml
    # the paper's 256 px XL setting, with DDPM + Min-SNR
    facecurate train manifests/train/xl-256.yaml -s objective.kind=ddpm
    # change settings from the command line
    facecurate train my.yaml -s optim.lr=3e-4 -s data.batch_size=16
    ```
    """
    from train.config import load_config
    from train.train import train

    try:
        cfg = load_config(config, overrides or [])
        train(cfg, resume=resume)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None


def sample_command(
    checkpoint: Annotated[Path, typer.Argument(
        help="A checkpoint folder, a run folder / ckpt folder (its latest checkpoint), or a weights file "
             "(.safetensors / .pt, ours or the public MMFace-DiT code's).", show_default=False)],
    caption: Annotated[str, typer.Option("--caption", "-c", help="The text prompt.", show_default=False)],
    mask: Annotated[Path | None, typer.Option(
        "--mask", help="Face-parsing mask PNG: a label map (ids 0..18) or its colour-coded RGB.")] = None,
    sketch: Annotated[Path | None, typer.Option("--sketch", help="Sketch PNG (black lines on white).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Grid PNG to write: the condition, then the samples.")] = Path("grid.png"),
    steps: Annotated[int, typer.Option(help="Sampler steps (Euler or DPM-Solver++).")] = 50,
    cfg: Annotated[float, typer.Option("--cfg", help="Classifier-free guidance scale on the text (1 = off).")] = 7.5,
    n: Annotated[int, typer.Option("--n", help="Images to generate.")] = 4,
    seed: Annotated[int, typer.Option(help="Noise seed; the same seed gives the same images.")] = 0,
    weights: Annotated[str, typer.Option(help="ema (default) or model weights.")] = "ema",
    vae: Annotated[str | None, typer.Option(help="VAE hub id or folder (default: the id in the shards).")] = None,
    text_encoder: Annotated[str | None, typer.Option(
        "--text-encoder", help="CLIP text encoder id or folder (default: the training config's).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    objective: Annotated[str | None, typer.Option(
        help="For a weights file: rf (default) or ddpm (a checkpoint folder records its own).")] = None,
    resolution: Annotated[int | None, typer.Option(
        help="For a weights file: image size in px (default 256, the public code's).")] = None,
) -> None:
    """Generate faces from a checkpoint, a caption and a mask or a sketch; write an image grid.

    **Examples**

    ```
    # four faces from a parsing mask (latest checkpoint of a run, EMA)
    facecurate sample runs/xl-256 -c "a smiling woman" --mask mask.png
    # from a sketch: eight images, another seed, weaker guidance
    facecurate sample runs/xl-256/ckpt/step_100000 -c "an old man" \\
        --sketch sketch.png --n 8 --seed 3 --cfg 4
    # a public MMFace-DiT checkpoint as it is (converted on load; the public code uses the FLUX.1 VAE)
    facecurate sample dit_model_weights_ema.safetensors -c "a smiling woman" --mask mask.png \\
        --vae black-forest-labs/FLUX.1-schnell
    ```
    """
    from train.sample import sample

    try:
        path = sample(checkpoint, caption, mask=mask, sketch=sketch, out=out, steps=steps, cfg_scale=cfg, n=n,
                      seed=seed, weights=weights, vae=vae, text_encoder=text_encoder, device=device,
                      objective=objective, resolution=resolution)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(f"wrote {path}")


def convert_command(
    src: Annotated[Path, typer.Argument(
        help="Weights file (.safetensors / .pt / .pth, ours or the public code's layout), or one of our "
             "checkpoint / run folders.", show_default=False)],
    dst: Annotated[Path, typer.Argument(help="The .safetensors file to write (plus OUT.json).", show_default=False)],
    to: Annotated[str | None, typer.Option(
        "--to", help="ours or public (default: the other layout than SRC's).")] = None,
    weights: Annotated[str, typer.Option(help="For a checkpoint folder: ema (default) or model.")] = "ema",
    num_heads: Annotated[int | None, typer.Option(
        "--num-heads", help="Head count, for a size that is not in MMFaceDiT_models (the weights do not say it).")] = None,
    objective: Annotated[str | None, typer.Option(
        help="rf or ddpm, recorded in the sidecar for `sample` (a checkpoint folder records its own).")] = None,
) -> None:
    """Convert MMFace-DiT weights between our layout and the public code's (Bharath-K3/MMFace-DiT).

    Checks the tensors against the architecture read from their shapes (strict), writes OUT as safetensors and
    OUT.json (size, architecture, conventions: rope, latent convention, t scale), then says what to run next.

    **Examples**

    ```
    # a public checkpoint into our layout, then sample from it
    facecurate convert-checkpoint dit_model_weights_ema.safetensors mmface-xl.safetensors
    # our run's latest EMA weights for the public code
    facecurate convert-checkpoint runs/xl-256 xl-public.safetensors --to public
    ```
    """
    from train.convert import convert

    if objective not in (None, "rf", "ddpm"):
        raise typer.BadParameter(f"--objective must be rf or ddpm, got {objective!r}")
    try:
        info = convert(src, dst, to=to, weights=weights, num_heads=num_heads, objective=objective)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None
    a = info["model_args"]
    typer.echo(f"converted {info['source']} ({info['from_layout']} layout) -> {info['dst']} ({info['layout']} layout) "
               f"+ {info['sidecar']}")
    typer.echo(f"MMFace-DiT{'-' + info['size'] if info['size'] else ''}: {a['depth']} blocks x {a['hidden_size']}, "
               f"{a['num_heads']} heads, {2 * a['latent_channels']} -> {a['latent_channels']} channels, "
               f"text {a['text_dim']}, {info['params']:,} parameters")
    typer.echo(f"conventions: rope {a['rope']}, latent_convention {info['latent_convention']}, "
               f"objective {info['objective'] or 'not recorded (sample uses rf unless --objective ddpm)'}")
    for w in info["warnings"]:
        typer.echo(f"warning: {w}")
    if info["layout"] == "ours":
        typer.echo(f"next: facecurate sample {info['dst']} -c \"a smiling woman\" --mask mask.png --vae VAE"
                   f"{' --objective ddpm' if info['objective'] == 'ddpm' else ''}  (or model.init_from: {info['dst']})")
    else:
        p = info["public_args"]
        typer.echo(f"next (public code): UnifiedDualStreamDiT(in_channels={p['in_channels']}, hidden_size={p['hidden_size']}, "
                   f"depth={p['depth']}, num_heads={p['num_heads']}, ...).load_state_dict("
                   f"safetensors.torch.load_file({str(info['dst'])!r}), strict=True)")


def _split_list(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for item in values or [] for v in item.split(",") if v.strip())


def evaluate_command(
    checkpoint: Annotated[Path, typer.Argument(
        help="A run folder (its latest checkpoint), a checkpoint folder, or a weights file.", show_default=False)],
    shards: Annotated[Path, typer.Option("--shards", help="Shard folder (index.json) whose split holds the conditions.",
                                         show_default=False)],
    split: Annotated[str, typer.Option(help="The split whose samples are the conditions.")] = "test",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for metrics.json, index.html and images/ "
                                             "(default RUN/eval).")] = None,
    per_condition: Annotated[int, typer.Option("--per-condition", help="Faces per condition and type.")] = 4,
    limit: Annotated[int | None, typer.Option(help="Only the split's first N samples.")] = None,
    kinds: Annotated[list[str] | None, typer.Option("--kinds", help="Condition types: mask, sketch, text (comma list).")] = None,
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 50,
    cfg: Annotated[float, typer.Option("--cfg", help="Classifier-free guidance scale on the text.")] = 7.5,
    seed: Annotated[int, typer.Option(help="Base noise seed (face j of key k: seed, crc32(k), j).")] = 0,
    weights: Annotated[str, typer.Option(help="ema (default) or model weights.")] = "ema",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Faces per sampling batch.")] = 16,
    vae: Annotated[str | None, typer.Option(help="VAE folder or hub id (default: the one in the shards).")] = None,
    text_encoder: Annotated[str | None, typer.Option("--text-encoder", help="The DiT's CLIP text encoder (default: the checkpoint's).")] = None,
    parser: Annotated[str | None, typer.Option(help="Face parser: segformer, farl or smp (default: the parse stage's).")] = None,
    parser_model: Annotated[str | None, typer.Option("--parser-model", help="The parser's weights (default: the parse stage's).")] = None,
    clip: Annotated[str, typer.Option(help="CLIPModel folder or hub id for CLIP score and distances.")] = "openai/clip-vit-large-patch14",
    fid_weights: Annotated[str | None, typer.Option("--fid-weights", help="FID Inception weights: torch-fidelity's "
                           "pt_inception-2015-12-05 file (standard) or a torchvision inception_v3 state dict, or random "
                           "(default: the torch hub cache).")] = None,
    fid_size: Annotated[int, typer.Option("--fid-size", help="Input size of a torchvision Inception (the standard one takes 299).")] = 299,
    lpips_net: Annotated[str, typer.Option("--lpips-net", help="LPIPS backbone: alex, vgg or squeeze.")] = "alex",
    lpips_weights: Annotated[str | None, typer.Option("--lpips-weights", help="torchvision backbone state dict, or random "
                             "(default: the torch hub cache).")] = None,
    niqe_params: Annotated[str | None, typer.Option("--niqe-params", help="NIQE pristine model (.npz or MATLAB .mat); "
                           "default basicsr's, else fitted on the real images.")] = None,
    skip: Annotated[list[str] | None, typer.Option("--skip", help="Metrics to leave out: fid, lpips, ms_ssim, mask, clip, niqe.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Score generated faces: FID, LPIPS, MS-SSIM, mask accuracy and mIoU (overall and per EC²Face group),
    CLIP score and distances, NIQE; overall and per condition type (mask, sketch, caption only).

    Every sample of the split is a condition: `--per-condition` faces each for mask + caption, sketch +
    caption and caption only, with fixed seeds. Writes OUT/metrics.json, OUT/index.html (condition |
    generated | real) and OUT/images/; prints the table. Metric models load from local files; a missing one is
    an error naming its option (or `--skip` it). See the README's "Evaluating" section.

    **Examples**

    ```
    # the paper's protocol on the test split (standard FID and LPIPS weights in the torch hub cache)
    facecurate evaluate runs/xl-256 --shards out/shards --split test --clip ~/models/clip-vit-large-patch14
    # a quick look: 100 conditions, 2 faces each, 20 steps, no FID
    facecurate evaluate runs/xl-256/ckpt/step_100000 --shards out/shards --limit 100 \\
        --per-condition 2 --steps 20 --skip fid
    # the demo's tiny model with tiny random-weight metric models
    facecurate evaluate runs/tiny --shards demo_out/shards --split train --fid-weights random \\
        --lpips-weights random --clip .cache/tiny-models/clip-tiny --vae .cache/tiny-models/vae-flux
    ```
    """
    from rich.console import Console

    from train.eval_report import next_step, table
    from train.evaluate import EvalOptions, check, evaluate
    from train.metrics import MetricOptions

    console = Console()
    try:
        metrics = MetricOptions(fid_weights=fid_weights, fid_size=fid_size, lpips_net=lpips_net, lpips_weights=lpips_weights,
                                clip=clip, niqe_params=niqe_params, skip=_split_list(skip))
        options = EvalOptions(split=split, per_condition=per_condition, limit=limit, kinds=_split_list(kinds) or
                              EvalOptions.kinds, steps=steps, cfg_scale=cfg, seed=seed, weights=weights,
                              batch_size=batch_size, vae=vae, text_encoder=text_encoder, parser=parser,
                              parser_model=parser_model, device=device, metrics=metrics)
        check(options)
        report = evaluate(checkpoint, shards, options, out=out, log=lambda m: console.print(m, highlight=False))
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None
    console.print(table(report))
    for note in report["notes"]:
        console.print(f"note: {note}", highlight=False)
    console.print(next_step(report), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``train``, ``sample`` and ``convert-checkpoint`` to a typer app (the facecurate CLI calls this)."""
    app.command("train")(train_command)
    app.command("sample")(sample_command)
    app.command("convert-checkpoint")(convert_command)
    app.command("evaluate")(evaluate_command)
