"""What the explorers write beside their figures, as HTML: the status line (what a render used, that
one is under way, why one failed), the scores, the word importance, and the tables of the method and
model comparisons. Every text from the outside (prompts, method and model names, messages) is escaped."""

from __future__ import annotations

import html
from typing import Any, Mapping, Sequence

import numpy as np

from ..methods.scores import DEFAULT_SCORE
from ..plotting import format_seconds, signed
from ..text import cut_note, has_words
from .policy import WORDS_METHOD

#: what a saved explorer without a kernel says instead of showing its controls
SNAPSHOT_NOTE = "run the cell to use the controls"

#: the explorers' classes: the figure scaled down to the output's width (never cut), a figure greyed out
#: while outdated, the busy cursor and badge, the status line; and, where the widget is shown from a saved
#: notebook without a kernel (ipywidgets marks every view "disconnected"), its controls and the broken-link
#: marks hidden and the snapshot note shown
STYLE = """<style>
.gradeclip-panel img.widget-image { max-width: 100%; height: auto; }
.gradeclip-stale { opacity: 0.3; filter: grayscale(80%); transition: opacity 0.1s; }
.gradeclip-busy, .gradeclip-busy * { cursor: progress; }
.gradeclip-status { min-height: 1.5em; max-width: 100%; }
.gradeclip-panel .widget-html-content { line-height: 1.4; }
.gradeclip-busy-badge { background: #f5b041; color: black; border-radius: 3px; padding: 1px 6px; white-space: nowrap; }
.gradeclip-spinner { display: inline-block; width: 0.7em; height: 0.7em; margin-right: 4px; border: 2px solid black;
  border-right-color: transparent; border-radius: 50%; animation: gradeclip-spin 0.8s linear infinite; }
@keyframes gradeclip-spin { to { transform: rotate(360deg); } }
.gradeclip-snapshot-note { display: none; }
.gradeclip-panel.jupyter-widgets-disconnected .gradeclip-snapshot-note { display: block; background: #fdebd0;
  border-left: 4px solid #f5b041; padding: 2px 8px; }
.gradeclip-panel.jupyter-widgets-disconnected .gradeclip-controls { display: none; }
.gradeclip-panel.jupyter-widgets-disconnected::before,
.gradeclip-panel .jupyter-widgets-disconnected::before { content: none; display: none; }
</style>"""

#: the colour of a negative score and of an error
RED = "#b03a2e"
_CELL = "padding:2px 6px;text-align:right"  # headings wrap in a narrow output; the numbers have no spaces
_FIRST = "padding:2px 6px;text-align:left"


def settings_text(state: Mapping[str, Any], precision: str | None, default: str = DEFAULT_SCORE) -> str:
    """"grad_eclip · block 3 · faithful mode · fp32": what a render used (a setting the method does
    not take is said to be unused; ``default``: the model's default score, ``score_parts``)."""
    layers = list(state.get("layers") or [])
    if not state.get("uses_layers", True):
        block = "block: not used"
    elif len(layers) > 1:
        block = f"blocks {layers[0]}\u2013{layers[-1]} (sum)"
    else:
        block = f"block {layers[0]}" if layers else "block ?"
    mode = f"{state.get('mode')} mode" if state.get("uses_mode", True) else "mode: not used"
    parts = [str(state.get("method")), block, mode]
    parts += score_parts(state, default)
    if precision:
        parts.append(str(precision))
    return " \u00b7 ".join(parts)


def score_parts(state: Mapping[str, Any], default: str = DEFAULT_SCORE) -> list[str]:
    """What a render's settings line says of its score: nothing for the cosine (a CLIP's default), else
    "score probability", or "score: not used" for a method that ignores the score, unless it is the model's
    ``default`` (which every method gives: a classifier's "score logit")."""
    score = state.get("score", DEFAULT_SCORE)
    if score == DEFAULT_SCORE:
        return []
    return [f"score {score}" if state.get("uses_score", True) or score == default else "score: not used"]


def target_text(prompt: str, labels: Sequence[str] = ()) -> str:
    """How a title names a target: a prompt in quotes, or a classifier's class (``labels``: its class names;
    ``prompt`` a name or an index) by its label and index."""
    from ..prompts import class_index

    try:
        index = class_index(labels, prompt) if labels else None
    except (TypeError, ValueError):  # not one of its classes: the render says so
        index = None
    return f"\u201c{prompt}\u201d" if index is None else f"\u201c{labels[index]}\u201d (class {index})"


def status_html(text: str) -> str:
    """The status line after a render: ``text`` in small print."""
    return f"<small>{html.escape(text)}</small>"


def busy_html(text: str) -> str:
    """The status line from a change until its figure is in: what is being drawn, and that the figure shown
    is outdated."""
    return (f"<div><span class='gradeclip-busy-badge'><span class='gradeclip-spinner'></span>rendering\u2026</span> "
            f"<small>{html.escape(text)} \u2026 the figure below is <b>outdated</b> (previous settings)</small></div>")


def snapshot_html(png: bytes | None, status: str, name: str) -> str:
    """What explorer ``name`` shows where no widget can be: its figure as a static picture (``png``, from
    when it was displayed), the status line of that figure (``status``, HTML) and the note that the controls
    need the cell run."""
    import base64

    picture = ("<img style='max-width:100%;height:auto' alt='the figure' src='data:image/png;base64,"
               f"{base64.b64encode(png).decode('ascii')}'/>") if png else ""
    return (f"<div class='gradeclip-snapshot'><div style='background:#fdebd0;border-left:4px solid #f5b041;"
            f"padding:2px 8px'><b>{html.escape(name)}: static snapshot</b> \u2014 {SNAPSHOT_NOTE}</div>"
            f"<div>{status}</div>{picture}</div>")


def error_html(message: str, what: str = "") -> str:
    """The status line of a failed render: why, and of which settings (``what``)."""
    where = f" ({html.escape(what)})" if what else ""
    return f"<div style='color:{RED}'><b>could not render{where}:</b> {html.escape(message)}</div>"


def words_title(text_method: str) -> str:
    """The heading of the word importance, naming the text method that made it."""
    label = "Grad-ECLIP text" if text_method == WORDS_METHOD else text_method
    return f"<b>word importance</b> ({html.escape(label)})"


def words_html(text_explanation: Any, image: int = 0) -> str:
    """Each prompt's words shaded by their importance (darker red = more important), as HTML; the words
    of a prompt cut at the context length follow in grey, struck through."""
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
        if pair.truncated:
            spans.append(f"<span title='{html.escape(cut_note(pair.truncated))}' style='color:#888;"
                         f"text-decoration:line-through'>{html.escape(' '.join(pair.truncated))}</span>")
        score_colour = RED if pair.score < 0 else "black"
        lines.append(f"<div style='margin:2px 0'><code style='color:{score_colour}'>{signed(pair.score)}</code> "
                     f"{' '.join(spans)}</div>")
    return "".join(lines)


def best_prompt(prompts: Sequence[str], scores: Sequence[float]) -> int | None:
    """The index of the best-scoring prompt that has words (``text.has_words``); None when none has."""
    candidates = [k for k, prompt in enumerate(prompts) if has_words(prompt)]
    return max(candidates, key=lambda k: scores[k]) if candidates and len(scores) else None


def scores_html(prompts: Sequence[str], scores: Sequence[float], symbol: str = "S", what: str = "prompt") -> str:
    """The prompts (``what``: "prompt", or "class") with their explained scores (``symbol``: "S" the cosine, "p"
    the probability, ...;
    ``methods.scores.SYMBOLS``), signed (negative in red), the best in bold; a prompt with no words
    (punctuation alone) is marked so and never the best."""
    best = best_prompt(prompts, scores)
    rows = []
    for i, (prompt, score) in enumerate(zip(prompts, scores)):
        colour = RED if score < 0 else "black"
        value = f"<b>{signed(score, 4)}</b>" if i == best else signed(score, 4)
        mark = "" if has_words(prompt) else f" <small style='color:{RED}'>(no words)</small>"
        rows.append(f"<tr><td style='{_FIRST}'>{html.escape(prompt)}{mark}</td>"
                    f"<td style='{_CELL};color:{colour}'>{value}</td></tr>")
    head = (f"<tr><th style='{_FIRST}'>{html.escape(what)}</th>"
            f"<th style='{_CELL}'>{html.escape(symbol_heading(symbol))}</th></tr>")
    notes = []
    if any(s < 0 for s in scores):
        notes.append("S &lt; 0 (red): the image and the prompt do not match; its map still has a maximum"
                     if symbol == "S" else f"{html.escape(symbol)} &lt; 0 (red); its map still has a maximum")
    if not all(has_words(p) for p in prompts):
        notes.append("(no words): punctuation or spaces alone, scored but naming nothing; never the best")
    note = "".join(f"<tr><td colspan='2' style='padding:2px 6px'><small>{n}</small></td></tr>" for n in notes)
    return f"<table style='border-collapse:collapse'>{head}{''.join(rows)}{note}</table>"


def symbol_heading(symbol: str) -> str:
    """A score's column heading: its symbol (``methods.scores.SYMBOLS``) with the score's name."""
    named = {"S": "S (cosine)", "p": "p (probability)", "logit": "logit", "\u0394S": "\u0394S (contrast)"}
    return named.get(symbol, symbol)


#: the method comparison's columns: the row's key and the column's heading (the score's: ``symbol_heading``)
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
              failed: Mapping[str, str] | None = None, symbol: str = "S") -> str:
    """The method comparison's table: one row per method, every column aligned the same way in header
    and body, the scores' headed by their ``symbol``; methods that could not run get a row that says why."""
    if not rows and not failed:
        return ""
    head = "".join(f"<th style='{_FIRST if i == 0 else _CELL}'>"
                   f"{html.escape(symbol_heading(symbol) if key == 'score' else label)}</th>"
                   for i, (key, label) in enumerate(ROW_COLUMNS))
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
    note = (f"<tr><td colspan='{len(ROW_COLUMNS)}' style='padding:2px 6px'><small>energy n/a: "
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
