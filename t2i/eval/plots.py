"""The report's pictures: the guidance sweep as fidelity against prompt agreement, and base vs LoRA
images side by side for the same prompts and seeds."""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image, ImageDraw

from t2i.files import atomic_write

CELL = 128  # pixels a generated image gets in the grid
CAPTION = 36  # pixels of caption above each column


def sweep_plot(report: dict, png: Path, x_metric: str = "shapes_fid", y_metric: str = "accuracy") -> Path | None:
    """One curve a variant through its guidance scales: x = fidelity (lower is better), y = agreement."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(next(iter(report["results"].values())).values()))
    if x_metric not in first or y_metric not in first:
        return None
    figure, axes = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, by_guidance in report["results"].items():
        points = [(float(g), s[x_metric], s[y_metric]) for g, s in by_guidance.items()]
        xs, ys = [p[1]["value"] for p in points], [p[2]["value"] for p in points]
        axes.errorbar(xs, ys, xerr=[[x - p[1]["ci"][0] for x, p in zip(xs, points)],
                                    [p[1]["ci"][1] - x for x, p in zip(xs, points)]],
                      yerr=[[y - p[2]["ci"][0] for y, p in zip(ys, points)],
                            [p[2]["ci"][1] - y for y, p in zip(ys, points)]], marker="o", capsize=3, label=name)
        for guidance, x, y in zip((p[0] for p in points), xs, ys):
            axes.annotate(f"cfg {guidance:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    floor = report["floor"].get(x_metric)
    if floor:
        axes.axvline(floor["value"], color="grey", linestyle=":", label="floor (real vs real)")
    axes.set_xlabel(f"{x_metric} (lower is better)")
    axes.set_ylabel(f"{y_metric} (higher is better)")
    axes.set_title(f"guidance sweep, N = {report['n']}, 95% intervals")
    axes.legend(fontsize=8)
    figure.tight_layout()
    atomic_write(png, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return png


def comparison_grid(rows: dict[str, list[Path]], prompts: list[str], png: Path) -> Path:
    """Rows of images (one a variant, named at the left), one column a prompt, captions on top."""
    label = 110
    columns = len(prompts)
    grid = Image.new("RGB", (label + columns * CELL, CAPTION + len(rows) * CELL), "white")
    draw = ImageDraw.Draw(grid)
    for column, prompt in enumerate(prompts):
        draw.multiline_text((label + column * CELL + 3, 2), "\n".join(textwrap.wrap(prompt, 22)[:3]), fill="black")
    for row, (name, files) in enumerate(rows.items()):
        top = CAPTION + row * CELL
        draw.multiline_text((4, top + CELL // 2 - 6), "\n".join(textwrap.wrap(name, 16)), fill="black")
        for column, file in enumerate(files[:columns]):
            with Image.open(file) as image:
                cell = image.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST)
                grid.paste(cell, (label + column * CELL, top))
    atomic_write(png, lambda tmp: grid.save(tmp, format="PNG"))
    return png
