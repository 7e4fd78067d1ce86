"""The trainer's commands for the ``facecurate`` CLI: ``train`` and ``sample`` (``register(app)`` adds them)."""

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
        help="A checkpoint folder, or a run folder / ckpt folder (its latest checkpoint).", show_default=False)],
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
) -> None:
    """Generate faces from a checkpoint, a caption and a mask or a sketch; write an image grid.

    **Examples**

    ```
    # four faces from a parsing mask (latest checkpoint of a run, EMA)
    facecurate sample runs/xl-256 -c "a smiling woman" --mask mask.png
    # from a sketch: eight images, another seed, weaker guidance
    facecurate sample runs/xl-256/ckpt/step_100000 -c "an old man" \\
        --sketch sketch.png --n 8 --seed 3 --cfg 4
    ```
    """
    from train.sample import sample

    try:
        path = sample(checkpoint, caption, mask=mask, sketch=sketch, out=out, steps=steps, cfg_scale=cfg, n=n,
                      seed=seed, weights=weights, vae=vae, text_encoder=text_encoder, device=device)
    except ConfigError as e:
        raise typer.BadParameter(str(e)) from None
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``sample`` to a typer app (the facecurate CLI calls this)."""
    app.command("train")(train_command)
    app.command("sample")(sample_command)
