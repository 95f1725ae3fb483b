"""The critique study's sentences, tables and figure (:mod:`.critique`), every number read from
``run_study``'s results: ``claims`` (the findings), ``assessment`` (where the critique is right and where it is
not), ``tables`` and ``markdown`` (the page docs/critique.md), ``plot_heads`` (the per-head terms)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .critique_routes import MODES


def _interval(triple: Sequence[float], digits: int = 3) -> str:
    mean, low, high = triple
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def claims(results: dict[str, Any]) -> list[str]:
    """The study's findings as sentences, every number read from ``results`` (what the notebook prints)."""
    out = []
    if "equivalence" in results:
        e = results["equivalence"]
        out.append("Grad-ECLIP's channel term is the gradient of the score with respect to the class token's attention "
                   "probabilities (o_cls = sum_i A[cls,i] v_i, so dS/dA[cls,i] = dS/do_cls . v_i): over both modes, "
                   "with and without the spatial weight, one block and three, its maps and ReLU(lambda_i sum_h "
                   f"dS/dA^h[cls,i]) by autograd differ by at most {e['max_abs_diff']:.2e} on a "
                   f"{e['pixels'][-2]} x {e['pixels'][-1]} input (square input, last block: {e['square']:.2e}).")
    if "per_head" in results:
        h = results["per_head"]
        out.append(f"In faithful mode the {h['heads']} heads' terms of block {h['block']} sum to the channel term "
                   f"(ReLU of the sum against Grad-ECLIP's map: {h['sum_relu_vs_grad_eclip']:.2e}); on "
                   f"{_percent(h['opposite_share'])} of the patches some head's term has the opposite sign of the sum.")
    if "cost" in results:
        c = results["cost"]
        s = c["seconds"]
        out.append(f"The attention route took {c['attention_over_grad_eclip']:.2f}x Grad-ECLIP's time "
                   f"({s['attention_route'] * 1e3:.1f} ms against {s['grad_eclip'] * 1e3:.1f} ms for {c['images']} "
                   f"images and {c['targets']} prompts, median of {c['repeats']}) and keeps "
                   f"{c['probability_bytes'] / 1e6:.2f} MB of attention probabilities (and a gradient as large per "
                   f"prompt); a forward that materialises A in every block took {c['explicit_over_native']:.2f}x the "
                   "model's own forward.")
    if "scores" in results:
        r = results["scores"]
        official = r["cells"]["one head, model"]
        faithful = r["cells"]["model's heads, model"]
        native = r["cells"]["one head, native"]
        native_faithful = r["cells"]["model's heads, native"]
        out.append(f"Official mode changes the model's scores: over {r['pairs']} image-prompt pairs the recomputed "
                   f"cosine differs from the model's own by {official['mean_abs_diff']:.4f} on average (at most "
                   f"{official['max_abs_diff']:.4f}) at the model's resolution, and the best prompt changed for "
                   f"{_percent(official['best_changed'])} of the {r['images']} images; faithful mode differs by at most "
                   f"{faithful['max_abs_diff']:.1e}.")
        out.append(f"Separated: one head instead of the model's heads moves the scores by "
                   f"{r['heads_effect']['model']:.4f} on average at the model's resolution "
                   f"({r['heads_effect']['native']:.4f} on native input); native input instead of the model's "
                   f"resolution moves them by {r['resolution_effect']['faithful']:.4f} with the model's heads "
                   f"({r['resolution_effect']['official']:.4f} with one head).")
        if results.get("weights") != "random":  # random weights classify at chance: nothing to report
            out.append(f"Zero-shot accuracy: {_percent(r['own_accuracy'])} under the model's own forward, "
                       f"{_percent(official['accuracy'])} under official mode's, {_percent(faithful['accuracy'])} "
                       f"under faithful mode's (native input: {_percent(native['accuracy'])} official, "
                       f"{_percent(native_faithful['accuracy'])} faithful).")
    if "faithfulness" in results:
        f = results["faithfulness"]
        p = f["paired"].get("official - faithful", {})
        text = [f"{m} {_interval(p[m])}" for m in ("deletion", "insertion", "pointing") if m in p]
        out.append(f"Scored by the unmodified model on {f['images']} images, official minus faithful maps (95% "
                   "intervals): " + "; ".join(text) + " (deletion: lower is better; insertion and pointing: higher).")
    if "sensitivity" in results:
        s = results["sensitivity"]
        parts = []
        for baseline, r in s["per_baseline"].items():
            d = r["faithful_minus_official"]
            better = ("faithful correlates better" if d[1] > 0 else "official correlates better" if d[2] < 0
                      else "the interval includes zero: no mode correlates better at 95%")
            parts.append(f"baseline {baseline}: faithful {r['mean']['faithful']:.3f}, official "
                         f"{r['mean']['official']:.3f}, difference {_interval(d)} ({better})")
        out.append(f"Sensitivity-n (mean Pearson correlation over n = {s['sizes']}, {s['subsets']} subsets each): "
                   + "; ".join(parts) + ".")
    if "sanity" in results:
        stages = results["sanity"]["stages"]
        text = [f"{mode}: Spearman {rows[1]['spearman']:.3f} after the first stage ({rows[1]['stage']}), "
                f"{rows[-1]['spearman']:.3f} when all are randomised" for mode, rows in stages.items()]
        out.append("Cascading randomisation: " + "; ".join(text) + ".")
    return out


# -------------------------------------------------------------------------------------------- output
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _excludes_zero(triple: Sequence[float]) -> bool:
    return triple[1] > 0 or triple[2] < 0


def assessment(results: dict[str, Any]) -> list[str]:
    """Where the critique is right and where it is not, and which differences the 95% intervals separate from
    zero: sentences whose every number and every verdict is read from ``results`` (the page's first section)."""
    out = []
    if "scores" in results:
        r = results["scores"]
        official, faithful = r["cells"]["one head, model"], r["cells"]["model's heads, model"]
        accuracy = ("" if results.get("weights") == "random" else
                    f", and zero-shot accuracy goes from {_percent(r['own_accuracy'])} to "
                    f"{_percent(official['accuracy'])}")
        out.append(f"The critique is right that official mode's results are not the original model's: its one-head "
                   f"recomputation moves the model's cosines by {official['mean_abs_diff']:.4f} on average and by up "
                   f"to {official['max_abs_diff']:.4f}, the best prompt changes for "
                   f"{_percent(official['best_changed'])} of the images{accuracy}. Faithful mode (the package's default) explains the model's own forward "
                   f"(largest score difference {faithful['max_abs_diff']:.1e}).")
    if "equivalence" in results:
        e = results["equivalence"]
        cost = ""
        if "cost" in results:
            cost = (f"; here the attention route took {results['cost']['attention_over_grad_eclip']:.2f}x "
                    "Grad-ECLIP's time")
        out.append(f"The equivalence holds (largest difference {e['max_abs_diff']:.1e}), but it does not make "
                   "Grad-ECLIP incorrect: it is the chain rule through o_cls = sum_i A[cls,i] v_i, so Grad-ECLIP's "
                   "channel term is the attention-probability gradient and Grad-ECLIP is an attention-gradient method, "
                   f"computed from the values without keeping A{cost}.")
    if "faithfulness" in results:
        f = results["faithfulness"]
        paired = f["paired"].get("official - faithful", {})
        lower_better = {"deletion"}
        separated, not_separated = [], []
        for metric, triple in paired.items():
            if _excludes_zero(triple):
                worse = (triple[0] > 0) == (metric in lower_better)
                separated.append(f"{metric} {_interval(triple)} (official maps {'worse' if worse else 'better'})")
            else:
                not_separated.append(f"{metric} {_interval(triple)}")
        text = f"On {f['images']} images, official minus faithful maps, 95% bootstrap intervals per comparison "
        text += "(not corrected for the several comparisons): "
        text += ("the interval excludes zero for " + "; ".join(separated) if separated
                 else "no interval excludes zero")
        if not_separated:
            text += "; it does not for " + "; ".join(not_separated)
        out.append(text + ".")
    if "sensitivity" in results:
        per = results["sensitivity"]["per_baseline"]
        better = [f"{b} ({'faithful' if r['faithful_minus_official'][0] > 0 else 'official'} better)"
                  for b, r in per.items() if _excludes_zero(r["faithful_minus_official"])]
        others = [b for b, r in per.items() if not _excludes_zero(r["faithful_minus_official"])]
        text = (f"Sensitivity-n on {results['sensitivity']['images']} images, faithful minus official correlation: "
                "the interval excludes zero with the baseline(s) " + ", ".join(better) if better else
                f"Sensitivity-n on {results['sensitivity']['images']} images, faithful minus official correlation: "
                "no interval excludes zero")
        if better and others:
            text += ", not with " + ", ".join(others)
        out.append(text + ".")
    return out


def markdown(results: dict[str, Any], command: str = "") -> str:
    """The docs page: where the critique is right and where not, the findings and the tables of every part
    that ran; then, when ``results["random_model"]`` holds a random-weight run, its findings and tables."""
    m = results["model"]
    lines = ["# Is Grad-ECLIP faithful? The critique measured", "",
             "Cui and Fan (arXiv 2605.12952, 2026) claim that Grad-ECLIP is equivalent to an attention-gradient "
             "route and that its results are not those of the original model. This page measures both claims "
             f"on `{m['model']}` (weights: {m['pretrained']}, {m['device']}, {results['threads']} thread(s)), every "
             "part of the study"]
    random = results.get("random_model")
    if random:
        r = random["model"]
        lines[-1] += (f", and on `{r['model']}` with random weights ({_pixels(random)} input) what random weights "
                      "can show: the equivalence, the cost and the score shift of official mode")
    lines[-1] += (". Every number below comes from one run of the command at the end "
                  "(`gradeclip_utils/studies/critique.py`, notebook `08_critique`).")
    lines += ["", "## Where the critique is right, and where it is not", ""]
    lines += [f"- {c}" for c in assessment(results)]
    if random:
        lines += [f"- Random-weight `{random['model']['model']}`: {c[0].lower()}{c[1:]}" for c in assessment(random)]
    lines += ["", "## Findings", ""]
    lines += [f"- {c}" for c in claims(results)] + [""] + tables(results)
    if random:
        r = random["model"]
        lines += [f"## Random weights: `{r['model']}`", "",
                  f"`load_model({r['model']!r}, pretrained=None)` (weights drawn with seed {random['seed']}, "
                  f"{r['device']}, {random['threads']} thread(s)): {_pixels(random)} input, parts "
                  f"{', '.join(random['parts'])}, {random['seconds']:.0f} s. A model without trained weights has no "
                  "accuracy or localisation to explain, so the faithfulness, sensitivity-n and sanity parts are not "
                  "run, and its zero-shot top-1 (chance) is not reported. The size of official mode's score shift "
                  "here says nothing about its size on trained weights: it depends on how differently the heads "
                  "attend, and random weights are not trained to attend anywhere.", "", "### Findings", ""]
        lines += [f"- {c}" for c in claims(random)] + [""] + tables(random, level=3)
    if command:
        lines += ["## Regenerate", "", "```bash", command, "```", ""]
    return "\n".join(lines)


def _pixels(results: dict[str, Any]) -> str:
    """The input size of the equivalence's square images, e.g. "224 x 224"."""
    height, width = results["equivalence"]["square_pixels"][-2:]
    return f"{height} x {width}"


def tables(results: dict[str, Any], level: int = 2) -> list[str]:
    """The markdown tables of every part that ran (lines), under headings of ``level``; top-1 accuracy only for
    trained weights."""
    lines: list[str] = []
    h = "#" * level
    trained = results.get("weights") != "random"
    if "equivalence" in results:
        lines += [f"{h} 1. The equivalence", ""]
        lines += _table(["mode", "spatial weight", "blocks", "largest abs. difference", "largest map value"],
                        [(r["mode"], r["spatial_weight"], r["layers"], f"{r['max_abs_diff']:.2e}", f"{r['scale']:.3g}")
                         for r in results["equivalence"]["rows"]]) + [""]
    if "cost" in results:
        c = results["cost"]
        lines += [f"{h} 2. The cost of each route", ""]
        lines += _table(["route", "median seconds"], [(k, f"{v:.4f}") for k, v in c["seconds"].items()]) + [""]
    if "scores" in results:
        r = results["scores"]
        own = f"; the model's own forward: top-1 {_percent(r['own_accuracy'])}" if trained else ""
        lines += [f"{h} 3. The model's own forward against the explained forward", "",
                  f"{r['images']} images x {r['classes']} prompts{own}.", ""]
        rows = [(v["heads"], v["resolution"], f"{v['mean_abs_diff']:.4f}", f"{v['max_abs_diff']:.4f}",
                 _percent(v["best_changed"]), *([_percent(v["accuracy"])] if trained else []))
                for v in r["cells"].values()]
        lines += _table(["heads", "input", "mean abs. score change", "largest", "best prompt changed"]
                        + (["top-1"] if trained else []), rows) + [""]
        if max(r["resolution_effect"].values()) == 0:
            lines += ["Native and model resolution give the same scores here: the pictures are already at the "
                      "model's input size.", ""]
    if "faithfulness" in results:
        f = results["faithfulness"]
        lines += [f"{h} 4. Faithfulness scored by the unmodified model", "",
                  "Deletion and insertion AUC of the target's cosine (project protocol), pointing game; mean [95% "
                  "interval].", ""]
        metrics = f["metrics"]
        lines += _table(["maps"] + metrics, [(n, *(_interval(v[k]) for k in metrics)) for n, v in f["means"].items()])
        lines += [""] + _table(["paired difference"] + metrics,
                               [(n, *(_interval(v[k]) for k in metrics)) for n, v in f["paired"].items()]) + [""]
    if "sensitivity" in results:
        s = results["sensitivity"]
        lines += [f"{h} 5. Sensitivity-n with declared baselines", ""]
        rows = [(b, mode, *(f"{x:.3f}" for x in r["mean_by_n"][mode]))
                for b, r in s["per_baseline"].items() for mode in MODES]
        lines += _table(["baseline", "mode"] + [f"n={n}" for n in s["sizes"]], rows) + [""]
    if "sanity" in results:
        lines += [f"{h} 6. Cascading randomisation", ""]
        stages = results["sanity"]["stages"]
        names = [row["stage"] for row in next(iter(stages.values()))]
        lines += _table(["mode"] + names, [(mode, *(f"{row['spearman']:.3f}" for row in rows))
                                           for mode, rows in stages.items()]) + [""]
    return lines


def plot_heads(per_head: dict[str, Any]):
    """The per-head terms of ``per_head_terms`` on the patch grid, their sum and its ReLU (one colour scale
    for the heads and the sum, red positive, blue negative)."""
    from matplotlib import pyplot as plt

    terms = np.asarray(per_head["terms"])
    total = np.asarray(per_head["sum"])
    panels = [(f"head {h}", terms[h]) for h in range(len(terms))] + [("sum over heads", total),
                                                                      ("ReLU(sum) = Grad-ECLIP", np.maximum(total, 0))]
    scale = float(max(np.abs(terms).max(), np.abs(total).max(), 1e-12))
    fig, axes = plt.subplots(1, len(panels), figsize=(1.7 * len(panels), 2.1), layout="constrained", squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        image = ax.imshow(values, cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(f"block {per_head['block']}: lambda_i dS/dA^h[cls, i] per head", fontsize=9)
    return fig
