"""Commands for masks, sketches and statistics: `parse`, `sketch`, `stats`, `eval-parse`, `train-parser`.

`parse`, `sketch` and `stats` run one stage on an ingested folder. Options given on the command line
are merged over the settings the folder last ran with (`manifest.resolved.yaml`), so changing one
option does not silently reset the others (and re-run every key).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.core.config import ConfigError
from pipeline.core.manifest import apply_overrides

console = Console(stderr=True)
out_console = Console()

Folder = Annotated[Path, typer.Argument(help="An ingested output folder.", show_default=False)]
RunnerOpt = Annotated[str | None, typer.Option("--runner", help="local (default) or ray.")]
DeviceOpt = Annotated[str | None, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:1.")]
BatchOpt = Annotated[int | None, typer.Option(help="Images per batch.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Any other setting of the stage: KEY=VALUE.")]


def _settings(out: Path, stage: str, given: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """The stage's previous settings in `out`, updated with the options given now."""
    from pipeline.core.run import previous_settings

    settings = previous_settings(out, stage)
    settings.update({k: v for k, v in given.items() if v is not None})
    return apply_overrides(settings, list(overrides or []))


def _run(out: Path, stage: str, settings: dict[str, Any], runner: str | None):
    from pipeline.core.run import print_summary, run_stage_command

    t0 = time.monotonic()
    result = run_stage_command(out, stage, settings, runner, console)
    print_summary([result], f"{stage} -> {out}", out_console, console, time.monotonic() - t0)
    return result


def register(app: typer.Typer) -> None:
    @app.command()
    def parse(
        out: Folder,
        parser: Annotated[list[str] | None, typer.Option("--parser", "-p", help="segformer, farl or smp:FOLDER; repeat to run several.")] = None,
        primary: Annotated[str | None, typer.Option(help="Parser whose map goes to masks/ (default: the first).")] = None,
        segformer_model: Annotated[str | None, typer.Option(help="Hub id or folder of a 19-class Segformer.")] = None,
        segformer_revision: Annotated[str | None, typer.Option(help="Hub revision to pin.")] = None,
        farl_model: Annotated[Path | None, typer.Option(help="FaRL celebm TorchScript file.")] = None,
        farl_detector: Annotated[Path | None, typer.Option(help="RetinaFace MobileNet-0.25 weights (unaligned photos).")] = None,
        aligned_source: Annotated[list[str] | None, typer.Option(help="Source names of aligned crops (FaRL skips detection); repeatable.")] = None,
        dtype: Annotated[str | None, typer.Option(help="float32, bfloat16 or float16.")] = None,
        save_all: Annotated[bool | None, typer.Option("--save-all/--primary-only", help="Also keep every other parser's maps (parser_masks/).")] = None,
        low_agreement: Annotated[float, typer.Option(help="Report keys whose agreement (mIoU) is below this.")] = 0.5,
        device: DeviceOpt = None,
        batch_size: BatchOpt = None,
        runner: RunnerOpt = None,
        overrides: SetOpt = None,
    ) -> None:
        """Write 19-class CelebAMask-HQ label maps to `OUT/masks/KEY.png` and a row per (key, parser) to OUT/parse.

        With two parsers each row records their agreement (mIoU): low agreement marks masks to review or
        filter out. FaRL parses aligned crops (CelebA-HQ, FFHQ) directly and unaligned photos through
        RetinaFace and a landmark warp.

        **Examples**

        ```
        # Segformer from the hub (jonathandinu/face-parsing), on the GPU when there is one
        facecurate parse runs/faces
        # two parsers, FaRL primary; keep both maps to compare them with eval-parse
        facecurate parse runs/faces -p farl -p segformer --farl-model ~/models/face_parsing.farl.celebm.main_ema_181500_jit.pt --farl-detector ~/models/mobilenet0.25_Final.pth --save-all
        # a parser you trained with train-parser
        facecurate parse runs/faces -p smp:runs/my-parser
        # the demo's tiny offline models
        facecurate parse demo_out --segformer-model .cache/tiny-models/segformer-face-tiny
        ```
        """
        given = {"parsers": parser, "primary": primary, "segformer_model": segformer_model,
                 "segformer_revision": segformer_revision,
                 "farl_model": str(farl_model.resolve()) if farl_model else None,
                 "farl_detector": str(farl_detector.resolve()) if farl_detector else None,
                 "aligned_sources": aligned_source, "dtype": dtype, "save_all": save_all, "device": device,
                 "batch_size": batch_size}
        settings = _settings(out, "parse", given, overrides)
        if parser and primary is None:
            settings.pop("primary", None)  # a new parser list picks its own default primary
        _run(out, "parse", settings, runner)
        _agreement_summary(out.resolve(), low_agreement)

    @app.command()
    def sketch(
        out: Folder,
        model: Annotated[Path | None, typer.Option(help="u2net_portrait.pth (or a folder holding it).")] = None,
        placement: Annotated[str | None, typer.Option(help="image (the image's frame and size) or crop (the reference 512 crop).")] = None,
        size: Annotated[int | None, typer.Option(help="Model input size (reference: 512).")] = None,
        device: DeviceOpt = None,
        batch_size: BatchOpt = None,
        runner: RunnerOpt = None,
        overrides: SetOpt = None,
    ) -> None:
        """Draw U2Net portrait sketches (black lines on white) to `OUT/sketches/KEY.png`.

        The face is cropped the way the reference demo does (OpenCV Haar cascade, grown box, white
        padding, 512x512); rows record the face box, and `no_face` where the cascade found none (the whole
        image is drawn then).

        **Examples**

        ```
        facecurate sketch runs/faces --model ~/models/u2net_portrait.pth
        # keep the reference 512x512 face crops instead of the image frame
        facecurate sketch runs/faces --placement crop
        # the demo's tiny offline model
        facecurate sketch demo_out --model .cache/tiny-models/u2net-portrait-tiny/u2net_portrait.pth
        ```
        """
        given = {"model": str(model.resolve()) if model else None, "placement": placement, "size": size,
                 "device": device, "batch_size": batch_size}
        settings = _settings(out, "sketch", given, overrides)
        if "model" not in settings:
            raise ConfigError("sketch: pass --model PATH to u2net_portrait.pth (xuebinqin/U-2-Net's portrait weights)")
        _run(out, "sketch", settings, runner)
        from pipeline.core.stage import StageContext

        t = StageContext(out.resolve()).ledger("sketch").read(["status", "flags"]).to_pylist()
        no_face = sum("no_face" in (r["flags"] or []) for r in t if r["status"] == "ok")
        console.print(f"[dim]{no_face:,} of {len(t):,} image(s) had no face the cascade could find "
                      "(drawn whole; filter on flags).[/dim]")

    @app.command()
    def stats(
        out: Folder,
        resolution: Annotated[int | None, typer.Option(help="Masks are counted at this square size.")] = None,
        reference_split: Annotated[str | None, typer.Option(help="Split that defines EC²Face weights and groups.")] = None,
        low_agreement: Annotated[float | None, typer.Option(help="Agreement below this is reported.")] = None,
        samples: Annotated[int | None, typer.Option(help="Image/mask/sketch triplets in the report.")] = None,
        runner: RunnerOpt = None,
        overrides: SetOpt = None,
    ) -> None:
        """Class statistics of OUT's masks: OUT/stats/attributes.json, plots and a self-contained report.html.

        Per class and split: mean pixel share and occurrence; EC²Face Eq. 10 rare-class weights; HFA / NFA /
        RFA groups by a written rule (thresholds settable with --set hfa_share=... etc.).

        **Examples**

        ```
        facecurate stats runs/faces
        # weights and groups from all splits, stricter rare-class rule
        facecurate stats runs/faces --reference-split all --set rfa_occurrence=0.2
        # look at it (or: python tools/screenshot_report.py runs/faces --png report.png)
        xdg-open runs/faces/stats/report.html
        ```
        """
        given = {"resolution": resolution, "reference_split": reference_split, "low_agreement": low_agreement,
                 "samples": samples}
        _run(out, "stats", _settings(out, "stats", given, overrides), runner)
        _stats_summary(out.resolve())

    @app.command("eval-parse")
    def eval_parse(
        out: Folder,
        masks: Annotated[list[Path] | None, typer.Option(help="Folder(s) of predicted label maps (KEY.png) to score instead.")] = None,
        split: Annotated[str | None, typer.Option(help="Only this split (e.g. val, test).")] = None,
        json_path: Annotated[Path | None, typer.Option("--json", help="Where to write the JSON report (default OUT/eval/parse.json).")] = None,
    ) -> None:
        """Score predicted masks against CelebAMask-HQ ground truth: pixel accuracy, per-class IoU, mIoU.

        Scores the primary masks, each parser's own maps (parse with --save-all) or any folder of label
        maps; predictions are resized to the ground truth's size with nearest neighbour.

        **Examples**

        ```
        facecurate eval-parse runs/celeba --split test
        # compare parsers: parse with both and --save-all first
        facecurate parse runs/celeba -p segformer -p farl --save-all && facecurate eval-parse runs/celeba
        # any folder of predictions
        facecurate eval-parse runs/celeba --masks /data/my_predictions
        ```
        """
        from pipeline.ops.eval_parse import evaluate, table, write_report

        out = out.resolve()
        if not (out / "index.parquet").exists():
            raise ConfigError(f"{out} has no index.parquet: ingest a CelebAMask-HQ source first")
        sources = {str(p): p.resolve() for p in masks} if masks else None
        try:
            report = evaluate(out, sources, split)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        out_console.print(table(report))
        path = json_path or out / "eval" / "parse.json"
        write_report(report, path)
        console.print(f"[dim]JSON report (with confusion matrices): {path}[/dim]")

    @app.command("train-parser")
    def train_parser_cmd(
        out: Folder,
        save: Annotated[Path, typer.Option(help="Folder for model.safetensors + parser.json.", show_default=False)],
        arch: Annotated[str, typer.Option(help="smp architecture: Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Segformer...")] = "Unet",
        encoder: Annotated[str, typer.Option(help="smp encoder: resnet34, mit_b2, tu-TIMM_MODEL...")] = "resnet34",
        encoder_weights: Annotated[str | None, typer.Option(help="Pretrained encoder weights (e.g. imagenet); needs network or a cache.")] = None,
        image_size: Annotated[int, typer.Option(help="Training and inference size.")] = 256,
        epochs: Annotated[int, typer.Option()] = 20,
        batch_size: Annotated[int, typer.Option()] = 8,
        lr: Annotated[float, typer.Option(help="AdamW peak learning rate (cosine schedule).")] = 3e-4,
        balance: Annotated[str, typer.Option(help="Class weights: sqrt, inverse or none.")] = "sqrt",
        dice: Annotated[float, typer.Option(help="Weight of the Dice loss term.")] = 0.5,
        workers: Annotated[int, typer.Option(help="Data-loading processes.")] = 2,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1.")] = "auto",
        resume: Annotated[bool, typer.Option("--resume", help="Continue from the model in --save.")] = False,
        overrides: SetOpt = None,
    ) -> None:
        """Fine-tune a segmentation-models-pytorch face parser on OUT's CelebAMask-HQ ground truth.

        Class-balanced loss (weighted cross-entropy + Dice) so rare classes such as earrings and necklaces
        are learned; validated on the val split after every epoch; saved as safetensors + parser.json after
        every epoch. Use the result as parser `smp:FOLDER`.

        **Examples**

        ```
        facecurate train-parser runs/celeba --save runs/parser-r34 --epochs 30
        facecurate parse runs/ffhq -p smp:runs/parser-r34
        # a smaller model at 512 px, continuing a killed run
        facecurate train-parser runs/celeba --save runs/parser-b2 --arch Segformer --encoder mit_b2 --image-size 512 --resume
        ```
        """
        from pipeline.core.config import from_dict
        from pipeline.ops.train_parser import TrainParserConfig, train_parser

        data = apply_overrides({"out": str(out.resolve()), "save": str(save.resolve()), "arch": arch,
                                "encoder": encoder, "encoder_weights": encoder_weights, "image_size": image_size,
                                "epochs": epochs, "batch_size": batch_size, "lr": lr, "balance": balance,
                                "dice": dice, "workers": workers, "device": device, "resume": resume},
                               list(overrides or []))
        cfg = from_dict(TrainParserConfig, data, "train-parser", Path.cwd())
        t0 = time.monotonic()
        try:
            meta = train_parser(cfg, log=lambda s: console.print(s, highlight=False))
        except (ValueError, FileNotFoundError) as e:
            raise ConfigError(f"train-parser: {e}") from None
        last = meta["history"][-1] if meta.get("history") else {}
        miou = last.get("val_miou")
        out_console.print(f"saved {cfg.save} ({meta.get('epochs_done', 0)} epoch(s), {meta['images']['train']:,} "
                          f"training images{f', val mIoU {miou:.3f}' if miou is not None else ''}) in "
                          f"{time.monotonic() - t0:.0f} s; use it with: facecurate parse OUT -p smp:{cfg.save}")


def _agreement_summary(out: Path, threshold: float) -> None:
    from pipeline.core.stage import StageContext

    rows = StageContext(out).ledger("parse").read(["key", "status", "primary", "agreement"]).to_pylist()
    agree = [r["agreement"] for r in rows if r["status"] == "ok" and r["primary"] and r["agreement"] is not None]
    if agree:
        low = sum(a < threshold for a in agree)
        console.print(f"[dim]agreement between parsers: mean mIoU {sum(agree) / len(agree):.3f}; {low:,} of "
                      f"{len(agree):,} key(s) below {threshold} (filter the `agreement` column of {out}/parse).[/dim]")


def _stats_summary(out: Path) -> None:
    import json

    doc = json.loads((out / "stats" / "attributes.json").read_text())
    table = Table(title=f"classes (groups and EC²Face weights from {doc['groups']['reference_split']})",
                  title_justify="left", header_style="bold")
    for c, j in (("class", "left"), ("group", "left"), ("pixel share", "right"), ("occurrence", "right"),
                 ("EC²Face w", "right")):
        table.add_column(c, justify=j)  # type: ignore[arg-type]
    ref = doc["groups"]["reference_split"]
    for c in doc["classes"]:
        table.add_row(c["name"], c["group"], f"{c['pixel_share'][ref]:.3%}", f"{c['occurrence'][ref]:.1%}",
                      f"{c['ec2face_weight']:.3g}")
    out_console.print(table)
    console.print(f"[dim]{doc['groups']['text']}\nreport: {out / 'stats' / 'report.html'}[/dim]")
