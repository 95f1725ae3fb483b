"""Evaluate a CLIP on freshly generated held-out scenes and print a table.

    python -m gradeclip_utils.synthetic.evaluate [--model synthetic] [--json results.json]
    python -m gradeclip_utils.synthetic.evaluate --select runs/synthetic_clip/snapshots

All scenes come from the held-out seed range (``HELDOUT_SEED_START`` and up), never used in training.

1. Zero-shot colour x shape: single-object scenes classified among the 35 prompts ``a {colour} {shape}``
   (top-1; also the share with the right colour and the right shape).
2. Image-to-text choice among captions that differ in one thing only: the true caption against every
   false caption obtained by changing one object's colour, its shape, the count (``three green
   triangles`` vs ``two``/``four``/...), the attribute binding (``a red circle and a blue square`` vs
   ``a blue circle and a red square``) or the spatial relation (``left of`` vs ``right of``). Chance is
   the mean of 1 / (number of options).
3. Grad-ECLIP localisation on 2-4-object scenes: one uniquely nameable object is prompted by its
   description (``a red circle``); the map (last block, faithful mode, the model's own preprocessing)
   is scored against the object's visible instance mask: pointing game (within ``--tolerance`` pixels
   of the 64x64 mask, 4 by default: the usual 15 px at 224 px scaled to 64 px; the strict version
   too), energy pointing game, with the mask's area share (what a uniform map would score) beside it,
   and the IoU of the map thresholded at its mean; for the misses, where the map's peak lies (a look-alike
   object sharing the prompted one's colour or shape, another object, or the background).

``--select`` does model selection instead: it scores every snapshot of a training run on a validation
range of its own (disjoint from the ranges above) and names the one with the best pointing game among
those above a zero-shot floor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..maps import resize_maps
from .captions import Caption, class_prompts, hard_negatives, object_caption, unique_objects
from .config import CONFIG_NAME, WEIGHTS_NAME
from .dataset import HELDOUT_SEED_START, make_example
from .scenes import Scene, generate_scene

__all__ = ["zero_shot_eval", "choice_eval", "item_maps", "localisation_eval", "miss_breakdown", "evaluate",
           "select_snapshot", "format_table", "run_command", "object_class", "OFFSETS", "MISS_KINDS"]

#: disjoint blocks of the held-out range used by each part of the evaluation (and by the CI test)
OFFSETS = {"zero_shot": 0, "choice": 100_000, "localisation": 200_000, "ci_zero_shot": 300_000,
           "ci_localisation": 400_000, "select_zero_shot": 500_000, "select_localisation": 600_000}

CHOICE_KINDS: tuple[str, ...] = ("colour", "shape", "count", "binding", "relation")

#: where a map's peak can fall when the pointing game misses (see :func:`miss_breakdown`)
MISS_KINDS: tuple[str, ...] = ("look-alike object", "other object", "background")


def _images(model, scenes: Sequence[Scene]) -> torch.Tensor:
    """The scenes through the model's own preprocessing (identity resize/crop at the model's size)."""
    return torch.stack([model.preprocess(s.image) for s in scenes]).to(model.device)


@torch.no_grad()
def _image_features(model, scenes: Sequence[Scene], batch_size: int = 256) -> torch.Tensor:
    feats = []
    for i in range(0, len(scenes), batch_size):
        x = _images(model, scenes[i:i + batch_size])
        feats.append(F.normalize(model.model.encode_image(x.to(_dtype(model))).float(), dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def _text_features(model, texts: Sequence[str]) -> torch.Tensor:
    tokens = model.tokenizer(list(texts)).to(model.device)
    return F.normalize(model.model.encode_text(tokens).float(), dim=-1)


def _dtype(model) -> torch.dtype:
    return next(model.model.parameters()).dtype


def zero_shot_eval(model, n: int = 700, offset: int = OFFSETS["zero_shot"]) -> dict[str, Any]:
    """Top-1 over the 35 colour x shape prompts on ``n`` single-object held-out scenes."""
    prompts, labels = class_prompts()
    scenes = [generate_scene(HELDOUT_SEED_START + offset + i, n_objects=1, with_captions=False)
              for i in range(n)]
    sims = _image_features(model, scenes) @ _text_features(model, prompts).t()
    pred = [labels[j] for j in sims.argmax(1).tolist()]
    truth = [(s.objects[0].colour, s.objects[0].shape) for s in scenes]
    return {
        "n": n,
        "top1": float(np.mean([p == t for p, t in zip(pred, truth)])),
        "colour": float(np.mean([p[0] == t[0] for p, t in zip(pred, truth)])),
        "shape": float(np.mean([p[1] == t[1] for p, t in zip(pred, truth)])),
        "chance": 1.0 / len(prompts),
    }


def _choice_item(index: int, kind: str) -> Optional[tuple[Scene, Caption, list[Caption]]]:
    """A held-out scene with a true caption and its false one-edit variants of ``kind``."""
    source = {"colour": "partial", "shape": "partial", "count": "count", "binding": "pair",
              "relation": "relation"}[kind]
    ex = make_example(index, kind=source)
    cap = ex.caption
    if kind == "count" and not any(p.count for p in cap.phrases):
        return None
    if kind == "binding" and (len(cap.phrases) != 2 or cap.relation is not None):
        return None
    if kind == "relation" and cap.relation is None:
        return None
    negs = hard_negatives(cap, ex.scene.objects, kind)
    if not negs:
        return None
    return ex.scene, cap, negs


def choice_eval(model, n: int = 200, offset: int = OFFSETS["choice"],
                kinds: Sequence[str] = CHOICE_KINDS) -> dict[str, dict[str, Any]]:
    """Accuracy of picking the true caption among it and its false one-edit variants, per kind."""
    out = {}
    for k, kind in enumerate(kinds):
        items = []
        i = 0
        while len(items) < n:
            item = _choice_item(HELDOUT_SEED_START + offset + 10_000 * k + i, kind)
            i += 1
            if item is not None:
                items.append(item)
        img = _image_features(model, [s for s, _, _ in items])
        texts = sorted({c.text for _, cap, negs in items for c in [cap, *negs]})
        index = {t: j for j, t in enumerate(texts)}
        txt = _text_features(model, texts)
        correct, chance, options = [], [], []
        for b, (_, cap, negs) in enumerate(items):
            cand = [index[cap.text]] + [index[c.text] for c in negs]
            sims = img[b] @ txt[cand].t()
            correct.append(int(sims.argmax()) == 0)
            chance.append(1.0 / len(cand))
            options.append(len(cand))
        out[kind] = {"n": n, "accuracy": float(np.mean(correct)), "chance": float(np.mean(chance)),
                     "options": float(np.mean(options)),
                     "example": f"{items[0][1].text}  vs  {items[0][2][0].text}"}
    return out


def localisation_items(n: int, offset: int, min_objects: int = 2, max_objects: int = 4
                       ) -> list[tuple[Scene, Caption, np.ndarray]]:
    """``n`` held-out scenes of 2-4 objects, each with one uniquely nameable object: (scene, caption
    naming it, its visible mask)."""
    items = []
    i = 0
    span = max_objects - min_objects + 1
    while len(items) < n:
        seed = HELDOUT_SEED_START + offset + i
        s = generate_scene(seed, n_objects=min_objects + i % span, with_captions=False)
        i += 1
        uniq = unique_objects(s.objects)
        if not uniq:
            continue
        j = uniq[int(np.random.default_rng([seed, 3]).integers(len(uniq)))]
        cap = object_caption(s.objects, j)
        items.append((s, cap, s.masks[j]))
    return items


def item_maps(model, items: Sequence[tuple[Scene, Caption, np.ndarray]], *, layers: Any = (-1,),
              method: str = "grad_eclip", mode: str = "faithful", batch_size: int = 64,
              prompts: Optional[Sequence[Any]] = None) -> torch.Tensor:
    """Each item's map (N, h, w) at the model's patch grid for its own caption (``localisation_items``), or for
    ``prompts[i]`` where given (one per item: an image classifier's class names, ``object_class``).

    Scenes are explained one prompt at a time, grouped by prompt: every scene goes through the model
    once, and no map is computed for another scene's prompt (which would cost a backward pass each
    when ``layers`` reach below the last block).
    """
    from .. import explain_image

    by_prompt: dict[str, list[int]] = {}
    for index, (_, caption, _) in enumerate(items):
        by_prompt.setdefault(caption.text if prompts is None else prompts[index], []).append(index)
    maps: list[Optional[torch.Tensor]] = [None] * len(items)
    for prompt, indices in by_prompt.items():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            ex = explain_image(model, [items[i][0].image for i in chunk], [prompt], layers=layers, method=method,
                               mode=mode, resolution="model", batch_size=batch_size, progress=False)
            for row, index in enumerate(chunk):
                maps[index] = ex.maps[row, 0]
    return torch.stack(maps).float()


def miss_breakdown(maps: torch.Tensor, items: Sequence[tuple[Scene, Caption, np.ndarray]],
                   hits: np.ndarray) -> dict[str, float]:
    """Where the map's peak lies for the items the pointing game misses, as shares of all items.

    The peak is the map's maximum after bilinear upsampling to the scene (as in the pointing game; the
    first one in reading order on ties). It lies on a *look-alike object* (another object that shares the
    prompted object's colour or its shape), on an *other object*, or on the *background* (no object's
    visible pixels). Tells a model that confuses objects apart from one whose maps are diffuse.
    """
    counts = dict.fromkeys(MISS_KINDS, 0)
    missed = [i for i in range(len(items)) if not hits[i]]
    if missed:
        scene_size = tuple(items[0][2].shape[-2:])
        peaks = resize_maps(maps[missed], scene_size, dtype=torch.float64).flatten(1).argmax(1).tolist()
        for i, peak in zip(missed, peaks):
            scene, caption, _ = items[i]
            y, x = divmod(peak, scene_size[1])
            target = scene.objects[caption.targets[0]]
            on = [j for j in range(len(scene.objects)) if j != caption.targets[0] and scene.masks[j][y, x]]
            if not on:
                counts["background"] += 1
            elif any(scene.objects[j].colour == target.colour or scene.objects[j].shape == target.shape
                     for j in on):
                counts["look-alike object"] += 1
            else:
                counts["other object"] += 1
    return {k: v / max(1, len(items)) for k, v in counts.items()}


def object_class(scene: Scene, caption: Caption) -> str:
    """The class name of the object a localisation item's caption names ("red circle"): the embedded
    classifier's target for the item (``synthetic.classifier.CLASS_NAMES``)."""
    return scene.objects[caption.targets[0]].description


def localisation_eval(model, n: int = 300, offset: int = OFFSETS["localisation"], tolerance: float = 4.0,
                      batch_size: int = 64, layers=(-1,), mode: str = "faithful",
                      prompt_of: Optional[Callable[[Scene, Caption], Any]] = None) -> dict[str, Any]:
    """Grad-ECLIP pointing game, energy pointing game and mean-threshold IoU against instance masks.
    ``prompt_of(scene, caption)``: what each item is explained for instead of its caption (``object_class`` for
    the embedded classifier)."""
    from ..metrics import localisation_scores

    items = localisation_items(n, offset)
    prompts = None if prompt_of is None else [prompt_of(scene, caption) for scene, caption, _ in items]
    maps_t = item_maps(model, items, layers=layers, mode=mode, batch_size=batch_size, prompts=prompts)
    masks = np.stack([mask for _, _, mask in items])
    scores = localisation_scores(maps_t, masks, tolerance=tolerance)
    return {
        "n": n,
        "tolerance_px": tolerance,
        "pointing": float(scores["pointing"].mean()),
        "pointing_strict": float(scores["pointing_strict"].mean()),
        "energy": float(np.nanmean(scores["energy"])),
        "area_share": float(scores["area_share"].mean()),
        "iou": float(np.nanmean(scores["iou"])),
        "misses": miss_breakdown(maps_t, items, scores["pointing"]),
        "grid": list(maps_t.shape[-2:]),
    }


def evaluate(model=None, n_zero_shot: int = 700, n_choice: int = 200, n_localisation: int = 300,
             tolerance: float = 4.0, layers: Sequence[int] = (-1,)) -> dict[str, Any]:
    """Run the three evaluations (``model``: a LoadedModel or a name for ``load_model``; ``layers``: the
    blocks Grad-ECLIP explains, summed after a ReLU per block as docs/method.md section 2.4 defines)."""
    from .. import load_model

    if model is None or isinstance(model, str):
        model = load_model(model or "synthetic", device="cpu")
    t0 = time.time()
    res = {"model": getattr(model, "name", "?"),
           "zero_shot": zero_shot_eval(model, n_zero_shot),
           "choice": choice_eval(model, n_choice),
           "localisation": {**localisation_eval(model, n_localisation, tolerance=tolerance, layers=tuple(layers)),
                            "layers": list(layers)}}
    res["seconds"] = round(time.time() - t0, 1)
    return res


def select_snapshot(folder: str | Path, min_zero_shot: float = 0.95, n_zero_shot: int = 350,
                    n_localisation: int = 300, progress: bool = True) -> tuple[Optional[Path], list[dict]]:
    """Model selection among a run's snapshots (``OUT/snapshots/step_N`` of ``train --snapshot-every``)
    on a validation range of held-out scenes of its own (``OFFSETS["select_*"]``, disjoint from the
    ranges that ``evaluate`` reports): the snapshot with the highest Grad-ECLIP pointing game among
    those with zero-shot top-1 >= ``min_zero_shot`` (ties: the later step). Returns (its folder or
    None, one row per snapshot)."""
    from tqdm import tqdm

    from .. import load_model

    snaps = sorted((int(d.name.split("_")[1]), d) for d in Path(folder).glob("step_*"))
    if not snaps:
        raise FileNotFoundError(f"no step_* snapshots in {folder}")
    rows = []
    for step, snap in tqdm(snaps, desc="snapshots", disable=not progress):
        model = load_model(f"local-dir:{snap.resolve()}", device="cpu")
        zs = zero_shot_eval(model, n_zero_shot, offset=OFFSETS["select_zero_shot"])
        loc = localisation_eval(model, n_localisation, offset=OFFSETS["select_localisation"])
        rows.append({"snapshot": str(snap), "step": step, "zero_shot": zs["top1"],
                     "pointing": loc["pointing"], "energy": loc["energy"]})
    ok = [r for r in rows if r["zero_shot"] >= min_zero_shot]
    best = max(ok, key=lambda r: (r["pointing"], r["step"])) if ok else None
    return (Path(best["snapshot"]) if best else None), rows


def format_table(res: dict[str, Any]) -> str:
    z, c, loc = res["zero_shot"], res["choice"], res["localisation"]
    rows = [("metric", "value", "reference", "n")]
    rows.append(("zero-shot colour x shape, top-1", f"{z['top1']:.1%}", f"chance {z['chance']:.1%}", z["n"]))
    rows.append(("  colour correct", f"{z['colour']:.1%}", "", z["n"]))
    rows.append(("  shape correct", f"{z['shape']:.1%}", "", z["n"]))
    for kind, v in c.items():
        rows.append((f"caption choice: {kind} ({v['options']:.1f} options)", f"{v['accuracy']:.1%}",
                     f"chance {v['chance']:.1%}", v["n"]))
    blocks = loc.get("layers", [-1])
    if list(blocks) != [-1]:
        rows.append((f"(Grad-ECLIP below: blocks {', '.join(map(str, blocks))} summed)", "", "", ""))
    rows.append((f"Grad-ECLIP pointing game (tol. {loc['tolerance_px']:g} px)", f"{loc['pointing']:.1%}", "",
                 loc["n"]))
    rows.append(("Grad-ECLIP pointing game (strict)", f"{loc['pointing_strict']:.1%}", "", loc["n"]))
    rows.append(("Grad-ECLIP energy pointing game", f"{loc['energy']:.1%}",
                 f"mask area share {loc['area_share']:.1%}", loc["n"]))
    rows.append(("Grad-ECLIP IoU (map > mean)", f"{loc['iou']:.1%}", "", loc["n"]))
    for kind, share in loc.get("misses", {}).items():
        rows.append((f"  pointing misses: peak on {kind}", f"{share:.1%}", "", loc["n"]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                               for i, (v, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)



def run_command(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """``gradeclip synthetic evaluate`` on its parsed arguments (the options are declared in ``cli/commands.py``)."""
    if a.export and not a.select:
        p.error("--export goes with --select")
    torch.set_num_threads(a.threads)
    if a.select:
        best, rows = select_snapshot(a.select, a.min_zero_shot)
        for r in rows:
            print(f"step {r['step']:>6}  zero-shot {r['zero_shot']:.1%}  pointing {r['pointing']:.1%}  "
                  f"energy {r['energy']:.1%}{'  <- selected' if best and r['snapshot'] == str(best) else ''}")
        print(f"selected: {best}" if best else f"no snapshot reaches zero-shot {a.min_zero_shot:.0%}")
        if a.export:
            if best is None:
                sys.exit("nothing to export")
            Path(a.export).mkdir(parents=True, exist_ok=True)
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                shutil.copyfile(best / name, Path(a.export) / name)
            print(f"exported to {a.export}")
        return
    res = evaluate(a.model, a.n_zero_shot, a.n_choice, a.n_localisation, a.tolerance, a.layers)
    print(format_table(res))
    print(f"(held-out scene ids from {HELDOUT_SEED_START}; {res['seconds']} s)", file=sys.stderr)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":  # the `gradeclip synthetic evaluate` alias (cli/commands.py declares its options)
    from ..cli import alias

    sys.exit(alias("synthetic evaluate"))
