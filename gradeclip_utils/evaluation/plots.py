"""A finished run's plots (``plot_results``: the mean deletion and insertion curves, the AUC bars, the sanity
curves) and its summary as a committed document with them (``write_doc``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..methods.registry import method_colour
from .protocols import curve_fractions

PLOTS = ("curves_deletion.png", "curves_insertion.png", "auc_bars.png", "sanity.png")

Style = Callable[[int, str], dict[str, Any]]


def _styles(plt: Any) -> Style:
    """Line style of the method at ``index`` of a plot: its colour in every figure (``method_colour``),
    Grad-ECLIP drawn thicker."""
    styles = ("-", "--", ":", "-.")

    def style(index: int, name: str) -> dict[str, Any]:
        return {"color": method_colour(name), "linestyle": styles[index % 4],
                "linewidth": 2.5 if name == "grad_eclip" else 1.3, "marker": "o", "markersize": 3, "label": name}

    return style


def _save(plt: Any, fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_curves(plt: Any, out: Path, summary: dict[str, Any], style: Style) -> None:
    fractions = summary.get("fractions") or curve_fractions("project")
    for kind, curves in summary["curves"].items():
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for index, (name, curve) in enumerate(curves.items()):
            ax.plot(100 * np.asarray(fractions[kind]), curve, **style(index, name))
        ax.set_xlabel(f"pixels {'deleted' if kind == 'deletion' else 'inserted'} (%)")
        ax.set_ylabel("target score (cosine)")
        ax.set_title(f"{kind} curves (mean over images; {'lower' if kind == 'deletion' else 'higher'} is better)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        _save(plt, fig, out / f"curves_{kind}.png")


def _plot_auc_bars(plt: Any, out: Path, table: dict[str, Any]) -> None:
    names = list(table)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, column, title in zip(axes, ("deletion_auc_score", "insertion_auc_score"),
                                 ("deletion AUC (lower is better)", "insertion AUC (higher is better)")):
        means = np.array([table[n][column][0] for n in names])
        errors = np.array([[table[n][column][0] - table[n][column][1], table[n][column][2] - table[n][column][0]]
                           for n in names]).T
        ax.bar(range(len(names)), means, yerr=errors, capsize=3, color=[method_colour(n) for n in names])
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
    _save(plt, fig, out / "auc_bars.png")


def _plot_sanity(plt: Any, out: Path, sanity: list[dict[str, Any]], style: Style) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for index, name in enumerate(dict.fromkeys(row["method"] for row in sanity)):
        rows = [r for r in sanity if r["method"] == name]
        ax.plot([r["depth"] for r in rows], [r["spearman"] for r in rows], **style(index, name))
    stages = {r["depth"]: r["stage"] for r in sanity}
    ax.set_xticks(sorted(stages))
    ax.set_xticklabels([stages[d] for d in sorted(stages)], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("randomised from the top down, cumulatively, up to")
    ax.set_ylabel("Spearman with the original map")
    ax.set_title("cascading randomisation (a sound map falls)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(plt, fig, out / "sanity.png")


def plot_results(out: Path, summary: dict[str, Any]) -> None:
    """Mean deletion and insertion curves per method, a bar chart of AUCs, and the sanity curves."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    style = _styles(plt)
    _plot_curves(plt, out, summary, style)
    table = summary["table"]
    if table and "deletion_auc_score" in next(iter(table.values())):
        _plot_auc_bars(plt, out, table)
    if summary["sanity"]:
        _plot_sanity(plt, out, summary["sanity"], style)


def write_doc(summary: dict[str, Any], out: str | Path, doc: str | Path) -> Path:
    """The summary as a committed document: the markdown with its plots and the run's CSV files copied
    into ``<doc stem>/`` beside it, the plots shown inline."""
    out, doc = Path(out), Path(doc)
    figures = doc.parent / doc.stem
    figures.mkdir(parents=True, exist_ok=True)
    shown = []
    for name in PLOTS:
        if (out / name).exists():
            shutil.copyfile(out / name, figures / name)
            shown.append(f"![{name[:-4].replace('_', ' ')}]({figures.name}/{name})")
    copied = []
    for name in ("per_image.csv", "timing.csv", "sanity.csv", "config.json"):
        if (out / name).exists():
            shutil.copyfile(out / name, figures / name)
            copied.append(f"[{name}]({figures.name}/{name})")
    text = summary["markdown"].rstrip().splitlines()
    text = [line for line in text if not line.startswith("Files: ")]
    text += ["", "The run's files: " + ", ".join(copied) + "."] if copied else []
    doc.write_text("\n".join(text + ["", "## Plots", ""] + shown) + "\n")
    return doc
