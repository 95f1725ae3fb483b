"""What the explorers write beside their figures, as HTML: the status line (what a render used, that
one is under way, why one failed), the scores, the word importance, and the tables of the method and
model comparisons. Every text from the outside (prompts, method and model names, messages) is escaped."""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

import numpy as np

from ..plotting import format_seconds, signed
from .policy import WORDS_METHOD

#: the explorers' classes: a figure greyed out while stale, the busy cursor, the status line and its badge
STYLE = """<style>
.gradeclip-stale { opacity: 0.3; filter: grayscale(80%); transition: opacity 0.1s; }
.gradeclip-busy, .gradeclip-busy * { cursor: progress; }
.gradeclip-status { min-height: 1.5em; }
.gradeclip-busy-badge { background: #f5b041; color: black; border-radius: 3px; padding: 1px 6px; }
</style>"""

#: the colour of a negative score and of an error
RED = "#b03a2e"
_CELL = "padding:2px 10px;text-align:right;white-space:nowrap"
_FIRST = "padding:2px 10px;text-align:left"


def settings_text(state: Mapping[str, Any], precision: str | None) -> str:
    """"grad_eclip · block 3 · faithful mode · fp32": what a render used (a setting the method does
    not take is said to be unused)."""
    layers = list(state.get("layers") or [])
    if not state.get("uses_layers", True):
        block = "block: not used"
    elif len(layers) > 1:
        block = f"blocks {layers[0]}\u2013{layers[-1]} (sum)"
    else:
        block = f"block {layers[0]}" if layers else "block ?"
    mode = f"{state.get('mode')} mode" if state.get("uses_mode", True) else "mode: not used"
    parts = [str(state.get("method")), block, mode]
    if precision:
        parts.append(str(precision))
    return " \u00b7 ".join(parts)


def status_html(text: str) -> str:
    """The status line after a render: ``text`` in small print."""
    return f"<small>{html.escape(text)}</small>"


def busy_html(text: str) -> str:
    """The status line while a render of ``text``'s settings is under way."""
    return (f"<div><span class='gradeclip-busy-badge'>\u23f3 rendering</span> <small>{html.escape(text)} "
            "\u2026 (the figure below is from the previous settings)</small></div>")


def error_html(message: str, what: str = "") -> str:
    """The status line of a failed render: why, and of which settings (``what``)."""
    where = f" ({html.escape(what)})" if what else ""
    return f"<div style='color:{RED}'><b>could not render{where}:</b> {html.escape(message)}</div>"


def words_title(text_method: str) -> str:
    """The heading of the word importance, naming the text method that made it."""
    label = "Grad-ECLIP text" if text_method == WORDS_METHOD else text_method
    return f"<b>word importance</b> ({html.escape(label)})"


def words_html(text_explanation: Any, image: int = 0) -> str:
    """Each prompt's words shaded by their importance (darker red = more important), as HTML."""
    import matplotlib

    colours = matplotlib.colormaps["Reds"]
    lines = []
    for k in range(len(text_explanation.texts)):
        pair = text_explanation.pair(image, k)
        peak = float(pair.word_importance.max()) if pair.word_importance.size else 0.0
        spans = []
        for word, value in zip(pair.words, pair.word_importance):
            shade = float(value) / peak if peak > 0 else 0.0
            r, g, b, _ = colours(shade)
            colour = "white" if shade > 0.6 else "black"
            style = (f"background:rgb({int(r * 255)},{int(g * 255)},{int(b * 255)});color:{colour};"
                     "padding:1px 3px;border-radius:3px")
            spans.append(f"<span title='{float(value):.3f}' style='{style}'>{html.escape(word)}</span>")
        score_colour = RED if pair.score < 0 else "black"
        lines.append(f"<div style='margin:2px 0'><code style='color:{score_colour}'>{signed(pair.score)}</code> "
                     f"{' '.join(spans)}</div>")
    return "".join(lines)


def scores_html(prompts: Sequence[str], scores: Sequence[float]) -> str:
    """The prompts with their scores S, signed (negative in red), the best in bold."""
    best = int(np.argmax(scores)) if len(scores) else -1
    rows = []
    for i, (prompt, score) in enumerate(zip(prompts, scores)):
        colour = RED if score < 0 else "black"
        value = f"<b>{signed(score, 4)}</b>" if i == best else signed(score, 4)
        rows.append(f"<tr><td style='{_FIRST}'>{html.escape(prompt)}</td>"
                    f"<td style='{_CELL};color:{colour}'>{value}</td></tr>")
    head = f"<tr><th style='{_FIRST}'>prompt</th><th style='{_CELL}'>S (cosine)</th></tr>"
    note = ("<tr><td colspan='2' style='padding:2px 10px'><small>S &lt; 0 (red): the image and the prompt do "
            "not match; its map still has a maximum</small></td></tr>") if any(s < 0 for s in scores) else ""
    return f"<table style='border-collapse:collapse'>{head}{''.join(rows)}{note}</table>"


#: the method comparison's columns: the row's key and the column's heading
ROW_COLUMNS: tuple[tuple[str, str], ...] = (
    ("method", "method"), ("seconds", "seconds"), ("score", "S (cosine)"),
    ("energy_on_prompted_objects", "energy on prompted objects"), ("max_on_prompted_objects", "maximum on them"))


def _cell_text(key: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if key == "score":
        return signed(value)
    if key == "seconds":
        return format_seconds(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def rows_html(rows: Sequence[dict[str, Any]], no_mask_reason: str | None = None,
              failed: Mapping[str, str] | None = None) -> str:
    """The method comparison's table: one row per method, every column aligned the same way in header
    and body; methods that could not run get a row that says why."""
    if not rows and not failed:
        return ""
    head = "".join(f"<th style='{_FIRST if i == 0 else _CELL}'>{html.escape(label)}</th>"
                   for i, (_, label) in enumerate(ROW_COLUMNS))
    body = []
    for row in rows:
        cells = []
        for i, (key, _) in enumerate(ROW_COLUMNS):
            value = row.get(key)
            colour = f";color:{RED}" if key == "score" and value is not None and value < 0 else ""
            text = html.escape(_cell_text(key, value))
            cells.append(f"<td style='{_FIRST if i == 0 else _CELL}{colour}'>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    for method, reason in (failed or {}).items():
        body.append(f"<tr><td style='{_FIRST}'>{html.escape(method)}</td><td colspan='{len(ROW_COLUMNS) - 1}' "
                    f"style='{_FIRST};color:{RED}'>could not run: {html.escape(reason)}</td></tr>")
    note = (f"<tr><td colspan='{len(ROW_COLUMNS)}' style='padding:2px 10px'><small>energy n/a: "
            f"{html.escape(no_mask_reason)}</small></td></tr>") if no_mask_reason else ""
    return f"<table style='border-collapse:collapse'><tr>{head}</tr>{''.join(body)}{note}</table>"


def agreement_html(names: Sequence[str], prompts: Sequence[str], agreement: np.ndarray) -> str:
    """Spearman rank correlation of each pair of models' maps, one row per pair, one column per prompt."""
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    head = "".join(f"<th style='text-align:right'>{html.escape(p[:30])}</th>" for p in prompts)
    rows = "".join(
        f"<tr><td>{html.escape(names[i])} vs {html.escape(names[j])}</td>"
        + "".join(f"<td style='text-align:right'>{agreement[k, i, j]:+.3f}</td>" for k in range(len(prompts)))
        + "</tr>" for i, j in pairs)
    return ("<b>agreement of the maps</b> (Spearman rank correlation on the first model's picture)"
            f"<table><tr><th style='text-align:left'>models</th>{head}</tr>{rows}</table>")
