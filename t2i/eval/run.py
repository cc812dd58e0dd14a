"""`t2i evaluate`: the base model and each LoRA or ControlNet on the same held-out prompts and seeds,
at each guidance scale, scored against the held-out real images (and, for control agreement, their
control images), every number with N and a bootstrap interval, beside the floor of real against other
real images of the same N.

Generated images are kept in the report folder (`images/<variant>/g<guidance>/NNNNN.png`): a
killed run goes on where it stopped (`resume`), and nothing is made twice.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from t2i.errors import InvalidInput, check, require_extra
from t2i.eval.config import MIN_SAMPLES, EvalConfig, extractor_of
from t2i.eval.extractors import Seen
from t2i.eval.metrics import Estimate, bootstrap, fid_estimate, is_estimate, kid_estimate, manifold_estimates
from t2i.eval.reference_stats import build_extractors, published_reference, real_images_seen
from t2i.eval.report import markdown, pictures
from t2i.files import atomic_write, write_text
from t2i.processes import process_state, share


@dataclass(frozen=True)
class Variant:
    loras: tuple[str, ...] = ()
    controlnet: str | None = None  # its images are each made with the held-out image's control image


def _variants(config: EvalConfig) -> dict[str, Variant]:
    """variant name -> what it adds: 'base', one a LoRA (named after it) and one a ControlNet."""
    from t2i.formats.lora import LoraRef
    from t2i.models.controlnet import find

    found: dict[str, Variant] = {"base": Variant()}
    for text in config.loras:
        ref = LoraRef.parse(text)
        _ = ref.file  # checked now: a missing LoRA fails before any image is made
        found[f"lora-{ref.name}" + (f"@{ref.scale:g}" if ref.scale != 1 else "")] = Variant(loras=(text,))
    for source in config.controlnets:
        path = Path(find(source, None))
        # named after its file, or its folder when the file has a generic name (model.safetensors)
        name = path.stem if path.is_file() and path.stem not in ("model", "diffusion_pytorch_model") else (
            path.name if path.is_dir() else path.parent.name)
        found[f"controlnet-{name}"] = Variant(controlnet=str(path))
    return found


def _held_out(config: EvalConfig):
    """(prompts, held-out real samples, other real samples): N of each, drawn with a fixed seed. Under
    a protocol N is the largest multiple of the IS splits up to num_samples that both sets hold."""
    from t2i.data.sources import read_collection, select_split

    _, samples = read_collection(config.data)
    held = select_split(samples, config.split, config.val_fraction, config.data_seed)
    if not held and config.split == "test":  # no test split in this layout: the seeded validation share
        held = select_split(samples, "val", config.val_fraction, config.data_seed)
    held_keys = {s.key for s in held}
    others = [s for s in samples if s.key not in held_keys]
    n = config.num_samples
    if config.protocol:
        n = min(n, len(held), len(others)) // config.is_splits * config.is_splits
        check(n >= MIN_SAMPLES, "data", config.data, f"holds {len(held)} held-out and {len(others)} other images; "
              f"the protocol needs at least {MIN_SAMPLES} of each")
    check(len(held) >= n, "num_samples", n, f"the held-out split of {config.data} has only {len(held)} images",
          hint="lower it, or give more data")
    check(len(others) >= n, "num_samples", n, f"the floor needs {n} other real images; {config.data} has {len(others)}")
    rng = random.Random(config.data_seed)
    chosen, floor = rng.sample(held, n), rng.sample(others, n)
    prompts = [rng.choice(sample.captions) for sample in chosen]
    if "control-agreement" in config.metrics:
        lacking = [s.key for s in chosen if s.conditioning is None]
        check(not lacking, "data", config.data, f"control-agreement needs each held-out image's control image; "
              f"{len(lacking)} have none (e.g. {lacking[:1]})", hint="make it with t2i shapes make-dataset --control")
    return prompts, chosen, floor


def _check_folder(out: Path, config: EvalConfig, resume: bool) -> None:
    """A report folder holds one run's settings: another run's are refused, the same continue on --resume."""
    settings_file = out / "settings.json"
    if out.exists() and not out.is_dir():
        raise InvalidInput("is a file, not a folder", field="output", value=out)
    if settings_file.exists():
        # a setting added since the folder was written stands at its default there
        defaults = {f.name: f.default for f in fields(EvalConfig) if f.default is not MISSING}
        recorded = {**json.loads(json.dumps(defaults)), **json.loads(settings_file.read_text())}
        wanted = json.loads(json.dumps(asdict(config)))
        if recorded != wanted:
            changed = sorted(k for k in {*recorded, *wanted} if recorded.get(k) != wanted.get(k))
            raise InvalidInput(f"holds a run with other settings ({', '.join(changed)})", field="output", value=out,
                               hint="choose a new folder")
        if not resume:
            raise InvalidInput("holds this run already", field="output", value=out,
                               hint="pass {resume} to continue it, or choose a new folder")
    elif out.exists() and any(out.iterdir()):
        raise InvalidInput("is not empty and holds no t2i evaluation", field="output", value=out)


def _my_runs(missing: list[int], batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's share of the missing images, as runs of consecutive indices.

    The missing indices are cut into batches exactly as one process would batch them (consecutive
    runs, batch_size at a time), and each process takes a contiguous block of those batches: every
    image is made once, in the same batch as a single-process run makes it, so with the same
    seeds it has the same pixels.
    """
    runs: list[list[int]] = []
    for index in missing:  # contiguous runs keep one seed sequence per GenerationConfig
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    batches = [run[i:i + batch_size] for run in runs for i in range(0, len(run), batch_size)]
    mine = batches[share(len(batches), rank, world)]
    merged: list[list[int]] = []
    for batch in mine:
        if merged and merged[-1][-1] == batch[0] - 1:
            merged[-1].extend(batch)
        else:
            merged.append(list(batch))
    return merged


def _generate_missing(model, config: EvalConfig, prompts, variant: Variant, guidance: float, folder: Path,
                      rank: int = 0, world: int = 1, controls: list | None = None) -> int:
    """Make this process's share of the images not yet in `folder` (image i uses seed + i, as
    `t2i generate --seed` does); returns how many it made. A ControlNet variant makes image i with
    `controls[i]`, one image a call (each has its own control image)."""
    from t2i.formats.lora import LoraRef
    from t2i.formats.png import png_bytes
    from t2i.sampling.config import GenerationConfig
    from t2i.sampling.control import ControlUnit
    from t2i.sampling.generate import generate_iter

    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(len(prompts)) if not (folder / f"{i:05d}.png").exists()]
    made = 0
    batch_size = 1 if variant.controlnet else config.batch_size
    for run in _my_runs(missing, batch_size, rank, world):
        # schedule None: the one a joined sampler name carries, else Normal, as every report so far was made
        generation = GenerationConfig(prompts=tuple(prompts[i] for i in run), seed=config.seed + run[0],
                                      steps=config.steps, sampler=config.sampler, schedule=None,
                                      guidance_scale=guidance, width=config.width, height=config.height,
                                      batch_size=config.batch_size, loras=tuple(map(LoraRef.parse, variant.loras)))
        results = []
        if variant.controlnet is not None and controls is not None:
            for index in run:
                unit = ControlUnit(variant.controlnet, str(controls[index]))
                one = dataclasses.replace(generation, prompts=(prompts[index],), seed=config.seed + index,
                                          batch_size=1, controls=(unit,))
                results += list(generate_iter(model, one, progress=False))
        else:
            results = list(generate_iter(model, generation, progress=False))
        for index, result in zip(run, results):
            data = png_bytes(result.image, result.settings)
            atomic_write(folder / f"{index:05d}.png", lambda tmp: tmp.write_bytes(data))
            made += 1
    return made


def _scores(config: EvalConfig, prompts, real: dict[str, Seen], fake: dict[str, Seen], fake_images,
            clip: tuple | None = None, reference: dict | None = None,
            seconds: dict | None = None, controls: list | None = None) -> dict[str, Estimate]:
    """Every asked metric of `fake` against `real` (both as each extractor sees them); `seconds`
    adds up the time each metric takes."""
    scores: dict[str, Estimate] = {}

    def timed(metric: str, compute):
        started = time.perf_counter()
        found = compute()
        if seconds is not None:
            seconds[metric] = seconds.get(metric, 0.0) + time.perf_counter() - started
        return found

    for metric in config.metrics:
        name = extractor_of(metric)
        if name is None:
            continue
        key, real_seen, fake_seen = metric.replace("-", "_"), real[name], fake[name]
        if metric.endswith("-fid"):
            given = (reference["mu"], reference["sigma"]) if reference is not None and name == "inception" else None
            scores[key] = timed(metric, lambda: fid_estimate(real_seen.features, fake_seen.features,
                                                             real_moments=given))
        elif metric.endswith("-kid"):
            scores[key] = timed(metric, lambda: kid_estimate(real_seen.features, fake_seen.features))
        elif metric.endswith("-is"):
            scores[key] = timed(metric, lambda: is_estimate(fake_seen.logits, config.is_splits))
        else:  # -pr: the shapes world's four keep their old names
            prefix = "" if name == "shapes" else f"{name}_"
            found = timed(metric, lambda: manifold_estimates(real_seen.features, fake_seen.features))
            scores.update({prefix + k: v for k, v in found.items()})
    if "accuracy" in config.metrics and fake_images is not None:
        scores.update(timed("accuracy", lambda: _accuracy(prompts, fake_images)))
    if "control-agreement" in config.metrics and fake_images is not None and controls is not None:
        scores.update(timed("control-agreement", lambda: _control_agreement(fake_images, controls)))
    if "clip-score" in config.metrics and fake_images is not None and clip is not None:
        from t2i.eval.clip_score import clip_scores

        model, processor = clip
        scores["clip_score"] = timed("clip-score", lambda: bootstrap(np.mean, clip_scores(model, processor,
                                                                                          fake_images, prompts)))
    return scores


def _accuracy(prompts, images) -> dict[str, Estimate]:
    """Text-image agreement: the analyser's colour and shape against the words of each prompt."""
    from t2i.shapes.analyser import analyse
    from t2i.shapes.world import ALL_COLOURS, SHAPES

    asked = [(next((w for w in p.split() if w in ALL_COLOURS), None), next((w for w in p.split() if w in SHAPES),
                                                                             None)) for p in prompts]
    seen = [analyse(image) for image in images]
    colour = np.array([a[0] == s[0] for a, s in zip(asked, seen)], dtype=float)
    shape = np.array([a[1] == s[1] for a, s in zip(asked, seen)], dtype=float)
    return {"colour_accuracy": bootstrap(np.mean, colour, bounds=(0, 1)),
            "shape_accuracy": bootstrap(np.mean, shape, bounds=(0, 1)),
            "accuracy": bootstrap(np.mean, colour * shape, bounds=(0, 1))}


def _control_agreement(images, controls) -> dict[str, Estimate]:
    """Where each image's object is against its held-out control image (read as a mask): IoU and the
    distance between centres. Every variant is measured against the same masks: the base model's
    numbers are the chance level of a model that places objects anywhere."""
    from t2i.shapes.controlnet import mask_of, placement

    rows = np.array([placement(image, mask_of(Image.open(control), image.size))
                     for image, control in zip(images, controls)])
    return {"control_iou": bootstrap(np.mean, rows[:, 0], bounds=(0, 1)),
            "control_centroid_px": bootstrap(np.mean, rows[:, 1], bounds=(0, np.inf))}


def evaluate(config: EvalConfig, out: Path, resume: bool = False, log=print, run: Path | None = None) -> dict | None:
    """Run the evaluation into `out` (report.json, report.md, images/, pictures); returns the report.

    Under `accelerate launch` or `torchrun`, every process makes its share of the images and the
    main one scores them all and writes the report (the others return None): the numbers equal a
    single-process run's, since every image is the same. The processes must share `out`.
    """
    from accelerate.utils import gather_object

    from t2i.models.config import ModelConfig
    from t2i.models.loading import load_model

    require_extra("eval", "matplotlib")
    state = process_state()
    rank, world, main = state.process_index, state.num_processes, state.is_main_process
    if main:  # the others would find the settings the main process has just written
        _check_folder(out, config, resume)
    clip, extractors, reference = None, {}, None
    if main:  # a missing CLIP model, Inception file or statistics file fails before any image is made
        extractors = build_extractors(config)
        if "clip-score" in config.metrics:
            from t2i.eval.clip_score import load_clip

            clip = load_clip(config.clip_model or "")  # EvalConfig requires a model with clip-score
    check(run is None or (run / "loss.png").is_file(), "run", run, "has no loss.png (is it a t2i finetune output?)")
    variants = _variants(config)
    prompts, real, other_real = _held_out(config)  # samples: only the main process reads their images
    controls = [sample.conditioning for sample in real] if "control-agreement" in config.metrics else None
    n = len(prompts)
    # under a launcher each process has its own device (accelerate makes it the current one)
    model = load_model(ModelConfig(model=config.model, device=state.device.type if world > 1 else "auto"))
    size = model.pipe.unet.config.sample_size * model.pipe.vae_scale_factor
    if main and config.reference_stats:  # checked against this run's extractor and size before anything is written
        reference = published_reference(config, extractors["inception"], size)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "settings.json", json.dumps(asdict(config), indent=2) + "\n")
    state.wait_for_everyone()
    timing: dict[str, Any] = {"generation_s": 0.0, "images_made": 0, "features_s": 0.0, "metrics_s": 0.0,
                              "images_scored": 0, "processes": world}
    started = time.perf_counter()
    for name, variant in variants.items():
        for guidance in config.guidance_scales:
            made = _generate_missing(model, config, prompts, variant, guidance,
                                     out / "images" / name / f"g{guidance:g}", rank, world, controls)
            made_everywhere = sum(gather_object([made]))
            timing["images_made"] += made_everywhere
            if main:
                log(f"{name} @ guidance {guidance:g}: {made_everywhere} image(s) made, "
                    f"{n - made_everywhere} kept from before")
    state.wait_for_everyone()
    timing["generation_s"] = time.perf_counter() - started
    if not main:
        return None

    started = time.perf_counter()
    real_seen = real_images_seen(config, extractors, real, size)
    floor_seen = real_images_seen(config, extractors, other_real, size)
    timing["features_s"] += time.perf_counter() - started
    seconds: dict[str, float] = {}
    floor = _scores(config, prompts, real_seen, floor_seen, None, reference=reference)
    results: dict[str, Any] = {}
    for name in variants:
        for guidance in config.guidance_scales:
            folder = out / "images" / name / f"g{guidance:g}"
            images = [Image.open(folder / f"{i:05d}.png").convert("RGB") for i in range(n)]
            started = time.perf_counter()
            fake_seen = {key: extractor.see(images) for key, extractor in extractors.items()}
            timing["features_s"] += time.perf_counter() - started
            started = time.perf_counter()
            scores = _scores(config, prompts, real_seen, fake_seen, images, clip, reference, seconds, controls)
            timing["metrics_s"] += time.perf_counter() - started
            timing["images_scored"] += len(images)
            results.setdefault(name, {})[f"{guidance:g}"] = {k: v.as_dict() for k, v in scores.items()}
    timing["metric_s"] = {metric: round(value, 3) for metric, value in seconds.items()}
    report = {"settings": asdict(config), "n": n, "extractors": {k: e.identity for k, e in extractors.items()},
              "real_images": f"the held-out images, centred square crop, resized (bicubic) to {size}x{size}",
              "floor": {k: v.as_dict() for k, v in floor.items()}, "results": results, "prompts": prompts,
              "timing": timing}
    if config.protocol:
        report["protocol"] = {"name": config.protocol, "asked": config.num_samples, "n": n,
                              "why": "the largest multiple of the IS splits up to the asked N that the held-out "
                                     "split and the other real images both hold"}
    if reference is not None:
        report["reference_stats"] = {"file": config.reference_stats, "made_by": reference["made_by"]}
    report["pictures"] = pictures(report, out, config, run)
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "report.md", markdown(report))
    return report
