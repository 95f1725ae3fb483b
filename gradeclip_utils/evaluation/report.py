"""What a finished run reports: the markdown summary (``summarise``), built table by table from the run's
CSV files and its ``config.json`` settings, with the numbers the plots (``plots.py``) draw."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics import AUC_DEFINITION
from ..stats import bootstrap_ci, paired_difference
from .datasets import EvalSet
from .methods import default_methods
from .protocols import EXPLAINED, curve_fractions
from .timing import speed_ratios


def _fmt(mean: float, low: float, high: float, percent: bool = False) -> str:
    if not np.isfinite(mean):
        return "n/a"
    if percent:
        return f"{100 * mean:.1f} [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]"


PROTOCOL_TEXT = {
    "project": ("this project's (docs/method.md sections 7.3-7.5): maps on the model's preprocessed pixels, pixels ranked by "
                "the bilinearly upsampled map, round(n x 0.5% x H x W) pixels changed at step n, deletion's random "
                "values one seeded random picture per image, tied pixels ordered by a seeded random permutation "
                "shared by every method on an image (repeated over several tie seeds, below)."),
    "authors": ("the Grad-ECLIP authors' deletion and insertion scripts exactly (imagenet_eval_deletion.py, "
                "imagenet_eval_insertion.py): each native picture (short side shrunk to 640 when longer) is "
                "perturbed and then preprocessed; int(H x W / 200) pixels per step in numpy's argsort order of the "
                "map, min-max normalised on its grid and then resized to the picture; deletion draws new random "
                "values for each step's pixels; accuracy against the ground truth; their baseline variants. No "
                "localisation."),
}


def _point_table(frame, methods: Sequence[str]) -> list[str]:
    """Mean top-1 accuracy at each scored point of the authors' curves, in percent."""
    lines = ["| method | deletion top-1 % at 0, 5, ..., 50% | insertion top-1 % at 5, ..., 50%, 100% |", "|---|---|---|"]
    for name in methods:
        rows = frame[frame["method"] == name]
        cells = []
        for kind in ("deletion", "insertion"):
            points = [100 * rows[f"{kind}_accuracy_{t:02d}"].mean() for t in range(11)]
            cells.append(" ".join(f"{p:.1f}" for p in points))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def tie_spread(frame, method: str, column: str, tie_seeds: int) -> float:
    """Range (max - min) over the tie seeds of a method's mean AUC (nan with one tie seed)."""
    rows = frame[frame["method"] == method]
    names = [column] + [f"{column}_tie{t}" for t in range(1, tie_seeds)]
    if tie_seeds < 2 or any(name not in rows for name in names) or rows.empty:
        return math.nan
    means = [float(rows[name].mean()) for name in names]
    return max(means) - min(means)


def _tie_table(frame, methods: Sequence[str], tie_seeds: int) -> list[str]:
    if tie_seeds < 2:
        return []
    columns = [("deletion_auc_score", "deletion AUC, score", False), ("insertion_auc_score", "insertion AUC, score", False),
               ("deletion_auc_accuracy", "deletion AUC, top-1 (points)", True),
               ("insertion_auc_accuracy", "insertion AUC, top-1 (points)", True)]
    lines = ["", f"**Ties.** How much the order of tied pixels moves the mean AUC: max - min of the method's mean AUC "
             f"over {tie_seeds} tie seeds (each a seeded random permutation per image, shared by every method). A gap "
             "between two methods smaller than these is within tie noise.", "",
             "| method | " + " | ".join(title for _, title, _ in columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for name in methods:
        cells = []
        for column, _, percent in columns:
            value = tie_spread(frame, name, column, tie_seeds)
            cells.append("n/a" if not np.isfinite(value) else f"{100 * value:.1f}" if percent else f"{value:.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines



def _read_run(out: Path, data: EvalSet) -> tuple[Any, Any, Any]:
    """The run's per-image, timing and sanity tables (pandas; empty where a file is missing), the per-image and
    sanity rows of ``data``'s items only."""
    import pandas as pd

    frame = pd.read_csv(out / "per_image.csv") if (out / "per_image.csv").exists() else pd.DataFrame()
    timing = pd.read_csv(out / "timing.csv") if (out / "timing.csv").exists() else pd.DataFrame()
    sanity = pd.read_csv(out / "sanity.csv") if (out / "sanity.csv").exists() else pd.DataFrame()
    keys = {item.key for item in data.items}
    if not frame.empty:
        frame = frame[frame["key"].astype(str).isin(keys)]
    if not sanity.empty:
        sanity = sanity[sanity["key"].astype(str).isin(keys)]
    return frame, timing, sanity


def _heading(data: EvalSet, config: dict[str, Any], frame: Any, command: str) -> list[str]:
    """The title, what is compared, the command that reproduces the run, the model, the items and the protocol."""
    lines = [f"# Method comparison: {data.name}", "",
             "Every explanation method of the workbench (Grad-ECLIP and the baselines of docs/method.md section 6, plus a "
             "random map as the floor) on the same images and targets, scored by the metrics of docs/method.md section 7: "
             "localisation against ground-truth masks (pointing game: the map's maximum inside the target's mask; "
             "energy pointing game: the share of the map's positive mass inside it; IoU of the map thresholded at "
             "its mean), faithfulness (deletion and insertion curves and their AUC), the cascading model-"
             "randomisation sanity check, and the time each method takes.", ""]
    if command:
        lines += ["Reproduce with:", "", "```", command, "```", ""]
    model = config["model"]
    lines += [f"Model: {model.get('model')} (weights: {model.get('pretrained') or 'its own'}, {model.get('precision')}, "
              f"{model.get('device')}). Items: {frame['key'].nunique() if not frame.empty else 0}. "
              + " ".join(f"{note}." for note in data.notes), ""]
    return lines + [f"Protocol: {PROTOCOL_TEXT[config.get('protocol', 'project')]}", ""]


def _metric_columns(config: dict[str, Any], has_masks: bool) -> list[tuple[str, str, bool]]:
    """(per-image column, title, shown in percent) of the method table's metrics."""
    columns = []
    if has_masks:
        columns += [("pointing", f"pointing game % (tol. {config['tolerance']:g} px)", True),
                    ("pointing_strict", "pointing game % (strict)", True), ("energy", "energy PG %", True),
                    ("iou", "IoU (map > mean) %", True)]
    if config["faithfulness"]:
        columns += [("deletion_auc_score", "deletion AUC, score (lower better)", False),
                    ("insertion_auc_score", "insertion AUC, score (higher better)", False),
                    ("deletion_auc_accuracy", "deletion AUC, top-1 %", True),
                    ("insertion_auc_accuracy", "insertion AUC, top-1 %", True)]
        score = config.get("score", "cosine")
        if score != "cosine":  # the explained score's own curves
            measure = EXPLAINED[score]
            columns += [(f"deletion_auc_{measure}", f"deletion AUC, {score} (explained; lower better)", False),
                        (f"insertion_auc_{measure}", f"insertion AUC, {score} (explained; higher better)", False)]
    return columns


def _method_table(frame: Any, timing: Any, methods: Sequence[str], columns: list[tuple[str, str, bool]]
                  ) -> tuple[list[str], dict[str, dict[str, tuple[float, float, float]]]]:
    """The markdown table of every method's metrics (mean and bootstrap interval) and speed ratios, and the
    numbers: method -> column -> (mean, low, high)."""
    header = ["method"] + [title for _, title, _ in columns] + ["time / forward (K=1)", "time / forward (K=8)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table: dict[str, dict[str, tuple[float, float, float]]] = {}
    ratios = speed_ratios(timing.to_dict("records")) if not timing.empty else {}
    for name in methods:
        rows = frame[frame["method"] == name]
        table[name] = {column: bootstrap_ci(rows[column].to_numpy()) for column, _, _ in columns}
        cells = [name] + [_fmt(*table[name][column], percent=percent) for column, _, percent in columns]
        for count in (1, 8):
            ratio = ratios.get(name, {}).get(count)
            cells.append("n/a" if ratio is None else f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.0f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return lines + ["", "Cells: mean [95% bootstrap confidence interval, 1000 resamples over images]."], table


def _classifier_run(config: dict[str, Any]) -> bool:
    """Whether the run explained an image classifier (its model's kind, which its provenance records)."""
    return config.get("model", {}).get("kind") == "image classifier"


def _faithfulness_notes(frame: Any, methods: Sequence[str], config: dict[str, Any]) -> list[str]:
    """What the AUCs measure, the authors' per-point accuracies and the tie table (nothing without faithfulness)."""
    if not config["faithfulness"]:
        return []
    classifier = _classifier_run(config)  # its own scores are its logits
    lines = ["", f"**AUC.** {AUC_DEFINITION} 'score' is the ground-truth class's "
             + ("logit" if classifier else "cosine with the image") + "; "
             f"'top-1' the share of images whose highest-scoring class (of {config['classes']}) is the "
             "ground truth (also when the map explains the predicted class)."]
    score = config.get("score", "cosine")
    if classifier:
        lines[-1] += (f" 'probability' is its softmax probability over all the classifier's {config['model']['classes']} "
                      f"classes; the maps explain its {config['explained_score']}.")
    elif score != "cosine":
        lines[-1] += (f" '{score} (explained)' is the score the maps explain, of the ground-truth class: "
                      + ("the logit scale x its cosine (columns *_logit)." if score == "logit" else
                         f"its softmax probability among the {config['classes']} classes at the model's logit "
                         "scale (columns *_probability)."))
    if config.get("protocol", "project") == "authors":
        lines += ["", "Under the authors' protocol insertion is scored at 5% ... 50% (its AUC over these ten "
                  "points) and on the whole picture; top-1 accuracy at each point, mean over images, as their "
                  "scripts print it:", ""] + _point_table(frame, methods)
    return lines + _tie_table(frame, methods, int(config.get("tie_seeds", 1)))


def _timing_note(timing: Any, config: dict[str, Any]) -> list[str]:
    """How the speed ratios were measured (nothing when nothing was timed)."""
    if timing.empty:
        return []
    return ["", f"**Time.** Seconds per (image, prompt) divided by seconds per image of one plain "
            f"`encode_image` forward, measured side by side on the same batch of "
            f"{int(timing['images'].iloc[0])} images with 1 and with 8 prompts per image: every run of a "
            "method timed in alternation with the forward, each by its fastest run (at least "
            f"{config.get('timing_repeats', 5)} runs after a warm-up, more up to {config.get('timing_budget', 1.0):g} s "
            "of runs; 2 runs for "
            "methods slower than 5 s), the run least disturbed by other work on the machine; the forward's "
            "fastest run over the whole measurement is the common reference: "
            f"{1000 * min(timing['forward_k1'].min(), timing['forward_k8'].min()):.1f} ms for the batch. "
            "Below 1 with 8 prompts: the prompts share the passes."]


def _settings_note(config: dict[str, Any]) -> list[str]:
    """Each method's settings in this run, and the methods the model's family could not run."""
    protocol = config.get("protocol", "project")
    centred = (" with the mean score subtracted (`centre=True`: the same map up to a constant in expectation, "
               "without the masks' coverage noise)") if config.get("rise_centre") else " (plain sum)"
    grad_eclip = ("last block, official mode (one head), q and k through out_proj, as the authors' evaluation "
                  "scripts" if protocol == "authors" else "last block, faithful mode")
    score = config.get("score", "cosine")
    explained = "" if score == "cosine" else (
        f"the maps explain the {score} of each image's class" + (" among every class of the classifier" if
                                                                 score == "probability" else "") + "; ")
    game = ("the logit exp(logit_scale) x cos differentiated (as Chefer et al.)" if score == "cosine" else
            f"the {score} differentiated")
    if _classifier_run(config):  # its own logit, or its probability
        game = f"the {config['explained_score']} differentiated"
    lines = ["", f"Settings: {explained}RISE {config['rise_masks']} masks (8 x 8 cells, p = 0.5, seed "
             f"{config['seed']}){centred}; M2IB {config['m2ib_steps']} steps x {config['m2ib_samples']} samples, no "
             f"clamp (as M2IB's own code); CLIP Surgery's class set: the {config['classes']} classifier prompts; GAME: "
             f"{game}, all blocks (game) and the last block (game_last); LeGrad: the last two blocks (its default); "
             f"Grad-ECLIP: {grad_eclip}; random: uniform noise on the patch grid."
             + (" Authors' variants: raw_attention, maskclip and grad_cam variant='authors', rollout from the last "
                "block; game, game_last, rollout, clip_surgery and m2ib explained on the model's centre crop and "
                "stretched over the picture (as the authors' scripts do), the others at native resolution."
                if protocol == "authors" else "")]
    if config.get("not_run"):
        lines += ["", "Not run on this model (its family cannot run them" + (
            "" if score == "cosine" else f", or they cannot explain the {score}") + "): "
                  + "; ".join(str(reason) for reason in config["not_run"].values()) + "."]
    return lines


def _pointing_claims(frame: Any, methods: Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """Grad-ECLIP's pointing game minus each other method's, paired over images, with its interval."""
    if "grad_eclip" not in methods:
        return [], []
    base = frame[frame["method"] == "grad_eclip"].set_index("key")
    lines = ["", "Pointing game (with tolerance), paired difference Grad-ECLIP minus other, percentage "
             "points [95% paired bootstrap CI]:", ""]
    claims = []
    for other in methods:
        if other == "grad_eclip":
            continue
        rows = frame[frame["method"] == other].set_index("key")
        keys = base.index.intersection(rows.index)
        diff = paired_difference(base.loc[keys, "pointing"].to_numpy(), rows.loc[keys, "pointing"].to_numpy())
        claims.append({"other": other, "difference": diff, "n": len(keys)})
        lines.append(f"- vs {other}: {_fmt(*diff, percent=True)} (n = {len(keys)})")
    return lines, claims


def _sanity_table(sanity: Any, methods: Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """The cascading randomisation's mean Spearman / SSIM per method and stage, as markdown and as rows."""
    if sanity.empty:
        return [], []
    stages = sanity[["depth", "stage"]].drop_duplicates().sort_values("depth")
    lines = ["", "Cascading randomisation (Spearman / SSIM of each map with the original, mean over "
             f"{sanity['key'].nunique()} images; stages cumulative from the top):", "",
             "| method | " + " | ".join(stages["stage"]) + " |", "|" + "---|" * (len(stages) + 1)]
    table = []
    for name in [m for m in methods if m in set(sanity["method"])]:
        rows = sanity[sanity["method"] == name]
        cells = []
        for depth in stages["depth"]:
            at = rows[rows["depth"] == depth]
            cells.append(f"{at['spearman'].mean():.2f} / {at['ssim'].mean():.2f}")
            table.append({"method": name, "depth": int(depth), "stage": str(at["stage"].iloc[0]),
                          "spearman": float(at["spearman"].mean()), "ssim": float(at["ssim"].mean())})
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines, table


def _mean_curves(frame: Any, methods: Sequence[str]) -> dict[str, dict[str, np.ndarray]]:
    """kind -> method -> the mean curve of the target's score over images."""
    return {kind: {name: frame[frame["method"] == name][[f"{kind}_score_{t:02d}" for t in range(11)]]
                   .to_numpy().mean(axis=0) for name in methods} for kind in ("deletion", "insertion")}


def summarise(out: Path, data: EvalSet, config: dict[str, Any], *, command: str = "",
              methods: Sequence[str] | None = None) -> dict[str, Any]:
    """Read the CSVs of a run and build the markdown summary and the numbers the plots need (``methods``
    in this order; by default ``default_methods()``). ``config``: the run's settings as its ``config.json``
    records them (``EvalConfig.to_json``, with ``not_run``)."""
    frame, timing, sanity = _read_run(out, data)
    methods = [m for m in (default_methods() if methods is None else methods)
               if not frame.empty and m in set(frame["method"])]
    protocol = config.get("protocol", "project")
    has_masks = data.has_masks and protocol == "project"
    lines = _heading(data, config, frame, command)
    table_lines, table = _method_table(frame, timing, methods, _metric_columns(config, has_masks))
    lines += table_lines
    if has_masks:
        lines.append(f"Area share of the target masks (what a uniform map scores in the energy PG): "
                     f"{100 * frame['area_share'].mean():.1f}%.")
    lines += _faithfulness_notes(frame, methods, config) + _timing_note(timing, config) + _settings_note(config)
    claim_lines, claims = _pointing_claims(frame, methods) if has_masks else ([], [])
    sanity_lines, sanity_rows = _sanity_table(sanity, methods)
    lines += claim_lines + sanity_lines
    lines += ["", "Files: per_image.csv (every item x method, with the curves), timing.csv, sanity.csv, "
              "curves_deletion.png, curves_insertion.png, auc_bars.png, sanity.png.", ""]
    curves = _mean_curves(frame, methods) if config["faithfulness"] and not frame.empty else {}
    return {"markdown": "\n".join(lines), "table": table, "claims": claims, "curves": curves,
            "fractions": curve_fractions(protocol), "sanity": sanity_rows, "methods": methods}
