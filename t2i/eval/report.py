"""What `t2i evaluate` writes beside report.json for people: report.md and its pictures (the sweep, the
side-by-side grid, the LoRA's loss curve). The numbers themselves are t2i.eval.run's."""

from __future__ import annotations

from pathlib import Path

from t2i.errors import check
from t2i.eval.config import EvalConfig
from t2i.files import atomic_write

GRID_PROMPTS = 8  # columns of the side-by-side grid


def pictures(report: dict, out: Path, config: EvalConfig, run: Path | None) -> list[str]:
    """sweep.png, grid.png and (with the LoRA's training folder) its loss curve; their names."""
    from t2i.eval.plots import comparison_grid, sweep_plot

    made = []
    # the documents' curve: FID against CLIP score over guidance; the shapes world's own: against accuracy
    first = next(iter(next(iter(report["results"].values())).values()))
    pairs = [(x, y) for x in ("inception_fid", "shapes_fid") for y in ("clip_score", "accuracy")
             if x in first and y in first]
    if len(config.guidance_scales) > 1 and pairs and sweep_plot(report, out / "sweep.png", *pairs[0]):
        made.append("sweep.png")
    guidance = f"{config.guidance_scales[-1]:g}"
    rows = {name: [out / "images" / name / f"g{guidance}" / f"{i:05d}.png" for i in range(GRID_PROMPTS)]
            for name in report["results"]}
    comparison_grid(rows, report["prompts"][:GRID_PROMPTS], out / "grid.png")
    made.append("grid.png")
    if run is not None:
        loss = run / "loss.png"
        check(loss.is_file(), "run", run, "has no loss.png (is it a t2i finetune output folder?)")
        data = loss.read_bytes()
        atomic_write(out / "loss.png", lambda tmp: tmp.write_bytes(data))
        made.append("loss.png")
    return made



def markdown(report: dict) -> str:
    """report.md: the settings, the extractors, the timings and one table row a variant and guidance."""
    floor = report["floor"]
    metrics = list(next(iter(next(iter(report["results"].values())).values())))
    show = lambda e: f"{e['value']:.4g} [{e['ci'][0]:.4g}, {e['ci'][1]:.4g}]"  # noqa: E731
    lines = [f"# t2i evaluate: {report['settings']['model']} on {report['settings']['data']}", "",
             f"N = {report['n']} held-out prompts, the same seeds for every row; [95% bootstrap interval, centred "
             "on the value; clipped to each metric's range: FID at 0 (a squared distance), proportions at 0 and "
             "1; KID's unbiased estimate is not clipped and can be below 0 when the sets match]. IS: "
             f"{report['settings']['is_splits']} splits, its std over them in the JSON. Real images: "
             f"{report['real_images']}.", ""]
    settings = report["settings"]
    if settings.get("width") or settings.get("height"):
        lines += [f"Generated at {settings.get('width') or 'native'} x {settings.get('height') or 'native'} "
                  "pixels (width x height), not the model's native size.", ""]
    if "protocol" in report:
        protocol = report["protocol"]
        lines += [f"Protocol {protocol['name']}: N = {protocol['n']} (asked {protocol['asked']}; "
                  f"{protocol['why']}).", ""]
    for name, identity in report["extractors"].items():
        weights = identity["weights_sha256"][:16] + ("..." if identity.get("weights_published", True) else
                                                     "... (not the published file)")
        lines.append(f"- {name}: {identity['network']}, weights SHA-256 {weights}, preprocessing "
                     f"{identity['preprocessing']}, {identity['dims']} features")
    if "reference_stats" in report:
        lines.append(f"- inception_fid against {report['reference_stats']['file']} "
                     f"(made by: {report['reference_stats']['made_by']})")
    timing = report["timing"]
    lines += [f"- time: generation {timing['generation_s']:.1f} s, features {timing['features_s']:.1f} s, "
              + ", ".join(f"{m} {v:.1f} s" for m, v in timing["metric_s"].items()), "",
             "| variant | guidance | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|",
             "| floor: real vs other real | - | " + " | ".join(show(floor[m]) if m in floor else "-" for m in metrics)
             + " |"]
    for name, by_guidance in report["results"].items():
        for guidance, scores in by_guidance.items():
            lines.append(f"| {name} | {guidance} | " + " | ".join(show(scores[m]) for m in metrics) + " |")
    lines += [""] + [f"![{name}]({name})" for name in report.get("pictures", [])]
    return "\n".join(lines) + "\n"
