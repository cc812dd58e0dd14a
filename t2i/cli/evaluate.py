"""`t2i evaluate`: whether a fine-tune helped, measured on held-out prompts."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import List, Optional

import typer

from t2i.cli import app, default_of, given, log, prepare_environment
from t2i.eval.config import METRICS, PROTOCOLS, EvalConfig

_default = partial(default_of, EvalConfig)


@app.command()
def evaluate(
    ctx: typer.Context,
    data: str = typer.Option(..., help="A data folder t2i finetune reads; its held-out split gives prompts and "
                             "the real images."),
    output: Path = typer.Option(..., help="Report folder: report.md, report.json, the generated images."),
    model: str = typer.Option(_default("model"), help="The base model (as t2i generate's --model)."),
    lora: Optional[List[str]] = typer.Option(None, help="PATH[:SCALE] of a LoRA to compare with the base; repeatable."),
    controlnet: Optional[List[str]] = typer.Option(None, help="A ControlNet to compare with the base (each image made "
                                                   "with its held-out control image; needs --metric "
                                                   "control-agreement); repeatable."),
    split: str = typer.Option(_default("split"), help="test (Karpathy's, where the layout has it) or val."),
    num_samples: int = typer.Option(_default("num_samples"), help="N: held-out prompts (and real images)."),
    guidance_scale: Optional[List[float]] = typer.Option(None, help="Repeat for a sweep. Default: 7.5."),
    sampler: str = typer.Option(_default("sampler")),
    steps: int = typer.Option(_default("steps")),
    seed: int = typer.Option(_default("seed"), help="Image i uses seed+i, for every model and guidance."),
    batch_size: int = typer.Option(_default("batch_size")),
    width: Optional[int] = typer.Option(None, help="Generated width. Default: the model's native size."),
    height: Optional[int] = typer.Option(None, help="Generated height. Default: the model's native size."),
    metric: Optional[List[str]] = typer.Option(None, help=f"Repeatable: {', '.join(METRICS)}. Default: the "
                                               "shapes metrics."),
    clip_model: Optional[str] = typer.Option(None, help="For clip-score: a local CLIP folder or a cached hub id "
                                             "(e.g. openai/clip-vit-base-patch16); never downloaded."),
    protocol: Optional[str] = typer.Option(None, help=f"{', '.join(PROTOCOLS)}: up to 10,000 held-out images, FID, "
                                           "KID, IS (10 splits), precision/recall, CLIP score with --clip-model, "
                                           "over guidance 1.5-8; on Inception, or the shapes network for demo. "
                                           "Options given beside it win."),
    is_splits: int = typer.Option(_default("is_splits"), help="Inception Score splits (N must divide evenly)."),
    inception_weights: Optional[str] = typer.Option(None, help="The FID Inception-v3 weights (.pth or "
                                                    ".safetensors). Default: ~/.cache/t2i/inception/"
                                                    "weights-inception-2015-12-05-6726825d.pth; never downloaded."),
    inception_preprocessing: str = typer.Option(_default("inception_preprocessing"),
                                                help="tf1 (torch-fidelity, the default) or pytorch-fid."),
    inception_unchecked: bool = typer.Option(False, help="Use Inception weights whose size or SHA-256 is not the "
                                             "published file's (the report says so)."),
    reference_stats: Optional[str] = typer.Option(None, help="An .npz with mu and sigma (pytorch-fid / clean-fid "
                                                  "style) to measure inception-fid against."),
    stats_dir: Optional[str] = typer.Option(None, help="Cache of real images' features. Default: "
                                            "~/.cache/t2i/eval-stats."),
    run: Optional[Path] = typer.Option(None, help="The LoRA's training folder: its loss curve joins the report."),
    resume: bool = typer.Option(False, help="Continue a run in OUTPUT with the same settings."),
    offline: bool = typer.Option(False, help="Never touch the network."),
):
    """Compare the base model and each --lora on the same held-out prompts and seeds."""
    prepare_environment(offline)
    options = {("loras" if k == "lora" else "controlnets" if k == "controlnet" else
                "guidance_scales" if k == "guidance_scale" else
                "metrics" if k == "metric" else k): v for k, v in given(ctx).items()
               if k not in ("output", "resume", "offline", "run", "protocol")}
    config = EvalConfig.for_protocol(protocol, **options) if protocol else EvalConfig(**options)
    from t2i.eval.run import evaluate as run_evaluation

    report = run_evaluation(config, output, resume=resume, log=lambda line: log.info("%s", line), run=run)
    if report is None:  # another process of a launch: the main one writes and prints the report
        return
    log.info("wrote %s (N = %d)", output / "report.md", report["n"])
    print((output / "report.md").read_text(encoding="utf-8"), end="")
