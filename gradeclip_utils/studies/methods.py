"""Methods and faithfulness: Grad-ECLIP against the baselines on the same inputs, and the figures of the
evaluation command's results (``python -m gradeclip_utils.evaluate``: per-image localisation, deletion and
insertion curves, the cascading-randomisation sanity check and timing).

``method_gallery`` explains the same images and prompts with every method; the ``plot_*`` functions read
the evaluation's CSVs (``per_image.csv``, ``sanity.csv``, ``timing.csv``) and draw means with 95%
bootstrap intervals over images (seaborn).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..maps import resize_maps
from ..methods import method_specs
from ..samples import as_input, default_resolution, image_name, prompt_mask

#: methods too slow for a quick run on the CPU (many forward passes or an optimisation per map): those
#: whose ``MethodSpec`` says ``slow`` (RISE and M2IB), as registered when the package was imported
SLOW_METHODS: tuple[str, ...] = tuple(spec.name for spec in method_specs() if spec.slow)


def available_methods(include_slow: bool = True, model: Any = None,
                      options: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Grad-ECLIP first, then the registered baselines (without the slow ones, RISE and M2IB, unless
    ``include_slow``); with a ``model``, only those its family can run (``explain.method_support``, with
    ``options`` per method), the others named in a printed line."""
    from ..explain import method_support
    from ..methods import get_spec, list_methods

    names = list_methods()["image"]
    ordered = [n for n in ["grad_eclip"] + [n for n in names if n != "grad_eclip"]
               if include_slow or not get_spec(n).slow]
    if model is None:
        return ordered
    reasons = {n: method_support(model, n, **dict((options or {}).get(n, {}))) for n in ordered}
    refused = [reason for reason in reasons.values() if reason]
    if refused:
        print("not run on this model: " + "; ".join(refused))
    return [n for n in ordered if reasons[n] is None]


def option_label(method: str, options: Mapping[str, Any] | None) -> str:
    """The method's name with the plain options (numbers, flags, words) it runs with that differ from its
    declared defaults, so that two variants never share a label: "rise (masks 200, centre)"."""
    from ..methods.registry import find_spec

    spec = find_spec(method)
    defaults = dict(spec.options) if spec is not None else {}
    parts = []
    for key, value in dict(options or {}).items():
        if not isinstance(value, (bool, int, float, str)) or defaults.get(key, object()) == value:
            continue
        parts.append(key if value is True else f"no {key}" if value is False else f"{key} {value}")
    return f"{method} ({', '.join(parts)})" if parts else method


def method_gallery(model: Any, images: Sequence[Any], prompts: Sequence[str], methods: Sequence[str], *,
                   method_options: Mapping[str, Mapping[str, Any]] | None = None, panel_size: float = 1.6,
                   columns: int = 4):
    """Per (image, prompt) pair: the input, titled with the prompt, then each method's map of that prompt,
    on lines of ``columns`` panels (legible at page width); each map min-max scaled on its own (the colour
    bar says so), each panel titled with the method and the options it runs with beyond its defaults
    (``option_label``). On synthetic scenes each panel gives the map's share of mass on the prompted
    objects. Returns (figure, table) where the table has one row per (image, method) with the label,
    seconds, score and that share."""
    import pandas as pd

    from .. import explain_image
    from ..metrics import energy_pointing_game
    from ..plotting import PanelRow, heat_map_grid

    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts: give one prompt per image")
    options = dict(method_options or {})
    rows, panel_rows = [], []
    for r, (image, prompt) in enumerate(zip(images, prompts)):
        resolution = default_resolution(model, image)
        mask = prompt_mask(image, prompt)
        maps, titles = [], []
        for method in methods:
            started = time.perf_counter()
            ex = explain_image(model, as_input(image), [prompt], method=method, resolution=resolution, progress=False,
                               **dict(options.get(method, {})))
            row = {"image": image_name(image, r), "prompt": prompt, "method": method,
                   "label": option_label(method, options.get(method)),
                   "seconds": time.perf_counter() - started, "score": float(ex.scores[0, 0])}
            title = row["label"]
            if mask is not None:
                heat = resize_maps(ex.raw[0][0], mask.shape, dtype=torch.float64).numpy()
                row["energy"] = float(energy_pointing_game(heat, mask))
                title += f"\nenergy {row['energy']:.2f}"
            rows.append(row)
            maps.append(ex.raw[0][0])
            titles.append(title)
        panel_rows.append(PanelRow(ex.images[0], maps, titles, input_title=f"\u201c{prompt}\u201d"))
    energy = "; energy: the map's share on the prompted objects" if any("energy" in row for row in rows) else ""
    fig = heat_map_grid(panel_rows, title=f"the same images and prompts under every method{energy}",
                        columns=columns, width_px=None, panel_inches=panel_size, pyplot=True)
    return fig, pd.DataFrame(rows)


def method_palette(methods: Sequence[str]) -> dict[str, Any]:
    """Each method's one colour (``methods.registry.method_colour``: Grad-ECLIP black, the random floor
    grey, every other method its own colour, the same in every figure)."""
    from ..methods.registry import method_colour

    return {m: method_colour(m) for m in methods}


def _legend_outside(fig, ax, columns: int) -> None:
    """The axes' legend under the figure, outside every axes (it hides no data)."""
    handles, labels = ax.get_legend_handles_labels()
    if ax.get_legend() is not None:
        ax.get_legend().remove()
    fig.legend(handles, labels, loc="outside lower center", ncol=columns, fontsize=8, frameon=False)


def _curve_frame(per_image, kind: str, measure: str = "score"):
    """Long table of one kind of curve (deletion or insertion): method, fraction, value, key."""
    pattern = re.compile(rf"^{kind}_{measure}_(\d+)$")
    columns = [(int(m.group(1)), c) for c in per_image.columns if (m := pattern.match(c))]
    if not columns:
        raise ValueError(f"per_image.csv has no {kind}_{measure}_NN columns (was faithfulness skipped?)")
    steps = max(i for i, _ in columns)
    long = per_image.melt(id_vars=["key", "method"], value_vars=[c for _, c in sorted(columns)], var_name="column",
                          value_name=measure)
    long["step"] = long["column"].str.extract(r"_(\d+)$")[0].astype(int)
    long["removed %"] = 50.0 * long["step"] / steps
    return long


def _interval(n: int) -> tuple[Any, str]:
    """The band drawn over ``n`` images and what it is called: a 95% bootstrap interval from 5 images
    on; below that the bootstrap has nothing to resample, and the band is the images' range."""
    if n >= 5:
        return ("ci", 95), f"bands: 95% bootstrap intervals over the {n} images"
    return ("pi", 100), f"bands: range over the {n} image{'s' if n != 1 else ''}"


def plot_curves(per_image, measure: str = "score", methods: Sequence[str] | None = None):
    """Mean deletion and insertion curves per method with 95% bootstrap bands over images (with fewer
    than 5 images the band is their range); one legend under both panels."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    order = list(methods) if methods is not None else list(dict.fromkeys(per_image["method"]))
    errorbar, bands = _interval(per_image["key"].nunique())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), layout="constrained")
    for ax, kind, title in zip(axes, ("deletion", "insertion"),
                               ("deletion (random pixels, most important first): lower is better",
                                "insertion (into black, most important first): higher is better")):
        long = _curve_frame(per_image, kind, measure)
        sns.lineplot(data=long, x="removed %", y=measure, hue="method", hue_order=order, errorbar=errorbar,
                     ax=ax, seed=0, marker="o", markersize=3, n_boot=500, palette=method_palette(order),
                     err_kws={"alpha": 0.1})
        ax.set_xlabel(f"pixels {'deleted' if kind == 'deletion' else 'inserted'} (%)")
        ax.set_ylabel("target score (cosine)" if measure == "score" else measure)
        ax.set_title(title, fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    _legend_outside(fig, axes[0], min(len(order), 7))
    axes[1].get_legend().remove()
    fig.suptitle(f"mean curves per method; {bands}", fontsize=10)
    return fig


def plot_metric_bars(per_image, columns: Sequence[str], labels: Sequence[str] | None = None,
                     methods: Sequence[str] | None = None, reference: str | None = None, title: str | None = None):
    """One panel per column of per_image.csv (e.g. pointing, energy, deletion_auc_score): the mean per
    method with its 95% bootstrap interval. ``reference`` (e.g. "area_share") is drawn as a dashed line.
    ``title``: the figure's title (the number of images and the intervals are added)."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    present = [c for c in columns if c in per_image.columns]
    if not present:
        raise ValueError(f"none of {list(columns)} in the results")
    labels = list(labels) if labels is not None else present
    order = list(methods) if methods is not None else list(dict.fromkeys(per_image["method"]))
    cols = min(len(present), 2)
    lines = -(-len(present) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(max(4.0, 0.42 * len(order) + 1.5) * cols, 3.4 * lines + 0.4),
                             squeeze=False, layout="constrained")
    for ax in axes.ravel()[len(present):]:
        ax.axis("off")
    for ax, column, label in zip(axes.ravel(), present, labels):
        sns.barplot(data=per_image, x="method", y=column, order=order, errorbar=("ci", 95), ax=ax, seed=0,
                    n_boot=1000, hue="method", hue_order=order, palette=method_palette(order), legend=False,
                    saturation=1.0)  # the methods' own colours, as in the line plots
        if reference is not None and reference in per_image.columns and column == "energy":
            ax.axhline(float(per_image[reference].mean()), color="grey", ls="--", lw=0.8)
            ax.set_title("dashed: a uniform map's energy (the masks' mean area)", fontsize=8)
        ax.set_ylabel(label)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=60, labelsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    n = per_image["key"].nunique() if "key" in per_image else len(per_image) // max(len(order), 1)
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}means over {n} images with 95% bootstrap intervals", fontsize=10)
    return fig


def plot_sanity(sanity):
    """Cascading randomisation: Spearman and SSIM of each method's map with the original map, per
    randomisation stage (from the top block down), means with 95% bootstrap bands over images (with
    fewer than 5 images the band is their range, and the title says how many)."""
    import seaborn as sns
    from matplotlib import pyplot as plt

    stages = sanity.drop_duplicates("depth").sort_values("depth")
    order = list(dict.fromkeys(sanity["method"]))
    palette = method_palette(order)
    errorbar, bands = _interval(sanity["key"].nunique() if "key" in sanity else 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
    for ax, column in zip(axes, ("spearman", "ssim")):
        sns.lineplot(data=sanity, x="depth", y=column, hue="method", hue_order=order, errorbar=errorbar, ax=ax,
                     seed=0, marker="o", markersize=3, n_boot=500, palette=palette, err_kws={"alpha": 0.1})
        ax.set_xticks(stages["depth"])
        ax.set_xticklabels(stages["stage"], rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("randomised from the top down to (cumulative)")
        ax.set_ylabel(f"{'Spearman' if column == 'spearman' else 'SSIM'} with the original map")
        ax.axhline(0, color="black", lw=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    _legend_outside(fig, axes[0], min(len(order), 7))
    axes[1].get_legend().remove()
    fig.suptitle("sanity check: a map that does not change when the weights are randomised does not explain the "
                 f"model\nmeans per stage; {bands}", fontsize=9)
    return fig


def plot_timing(timing):
    """Time per (image, prompt) relative to one plain image forward, with 1 and with 8 prompts per image
    (a log axis with its minor ticks labelled, so that ratios below 1 can be read)."""
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    order = timing.sort_values("ratio_k8")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(order) + 2), 3.8), layout="constrained")
    x = np.arange(len(order))
    ax.bar(x - 0.2, order["ratio_k1"], width=0.4, label="1 prompt per image", color="#5dade2")
    ax.bar(x + 0.2, order["ratio_k8"], width=0.4, label="8 prompts per image", color="#2e86c1")
    ax.set_xticks(x)
    ax.set_xticklabels(order["method"], rotation=60, ha="right", fontsize=8)
    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 0.2, 1, 50: ratios, not powers of ten
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(plain)
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.axhline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_ylabel("time per (image, prompt) / one forward")
    ax.set_title("time per (image, prompt), relative to one plain image forward (dashed: 1)", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def read_results(folder: str | Path) -> dict[str, Any]:
    """The evaluation's CSVs as DataFrames (missing files give None)."""
    import pandas as pd

    folder = Path(folder)
    return {name: (pd.read_csv(folder / f"{name}.csv") if (folder / f"{name}.csv").exists() else None)
            for name in ("per_image", "timing", "sanity")}
