"""Compare explanation methods on localisation, faithfulness, the sanity check and speed.

    python -m gradeclip_utils.evaluate                          # the synthetic world (offline default)
    python -m gradeclip_utils.evaluate --dataset imagenet --data /path/to/val --model ViT-B-16 --pretrained openai
    python -m gradeclip_utils.evaluate --dataset folder --data images/prompts.csv   # image,prompt[,mask] rows
    python -m gradeclip_utils.evaluate --dataset imagenet --data /path/to/val --model ViT-B-16 --pretrained openai \
        --protocol authors --target pred     # the Grad-ECLIP authors' deletion / insertion, number for number

Protocols (deletion and insertion; see PROTOCOL_TEXT and docs/method.md section 7):
  project    (default) maps and perturbations on the model's preprocessed pixels; tied pixels ordered by a
             seeded random permutation per image, shared by every method, repeated over --tie-seeds seeds
             and the range of each method's mean AUC reported; localisation on the same maps.
  authors    the Grad-ECLIP authors' imagenet_eval_deletion.py / imagenet_eval_insertion.py exactly:
             640 short-side shrink, perturbation of the native picture before preprocessing, int(HW/200)
             pixels per step, new random values per step, numpy argsort order of the min-max-normalised-
             then-resized map, accuracy against the ground truth with either target, their variants of
             Grad-ECLIP (official mode, out_proj q and k), raw attention, MaskCLIP, Grad-CAM and rollout,
             and what each method explains (the classifier's row; the bare class name for GAME, rollout
             and M2IB; the class name and their 59 names, prompt-ensembled, for CLIP Surgery).

Methods: by default every method the model's family can run (a ResNet CLIP has no M2IB, ITSM or LeGrad;
the summary names what was left out and why); --methods names them (one the family cannot run is an error).

Data sets:
  synthetic  held-out scenes of the synthetic world (2-4 objects), one uniquely nameable object each,
             prompted by its name ("a red circle") and scored against its exact visible mask; the
             zero-shot classifier is the 35 colour x shape prompts.
  imagenet   a folder of class subfolders (ImageNet's wnid folders get the standard class names; other
             folders are named by their folder name); zero-shot classifier from the class names and the
             80 OpenAI templates; the target is the ground-truth class (``--target pred``: the predicted
             class). No masks: localisation metrics are left out.
  folder     images with a CSV of ``image,prompt[,mask]`` (paths relative to the CSV's folder; a mask
             is an image whose non-zero pixels mark the target); the classifier is the CSV's prompts.

Per (image, method): pointing game (with a tolerance and strict), energy pointing game, IoU of the map
thresholded at its mean, and deletion / insertion curves with their AUC (see ``AUC_DEFINITION``).
Per method: time per (image, prompt) as a multiple of one plain image forward pass, and the cascading
randomisation sanity check on a few images. Writes ``per_image.csv``, ``timing.csv``, ``sanity.csv``,
``summary.md`` (means with 95% bootstrap confidence intervals) and plots into ``--out``. A run that is
interrupted resumes where it stopped when started again with the same settings.

Several processes: ``torchrun --nproc-per-node N -m gradeclip_utils.evaluate ...`` (also under ``srun`` or
``accelerate launch``) runs on ``cuda:LOCAL_RANK`` per rank (NCCL), or on the CPU with gloo (``--device cpu``),
and writes the same files as one process (see ``gradeclip_utils.distributed``). The work units are the
batches one process runs (items sorted by target, cut every ``--batch-size``), the same whatever N; batch i
goes to rank i % N. A run with fewer batches than ranks cuts them finer, ceil(items / N) items each, so that
every rank works, and records that batch size in ``config.json`` (``distributed.batch_size``): one process
with ``--batch-size`` set to it writes the same files. Results go to part files under ``OUT/parts/`` as they finish (each rank its own) and
rank 0 merges them, in the order one process writes, into ``per_image.csv`` and ``sanity.csv`` once every
rank has finished. The timing runs once, on rank 0, while the other ranks wait (so that it is not disturbed);
the sanity check is split by method (method i of the list on rank i % N). ``config.json`` records
``"distributed": {"world_size": N, "items_per_rank": [...]}``; a run stopped midway resumes from its part
files, also with another N. ``run.json`` gives the throughput of the per-image phase.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm  # text progress: it stays readable in a saved or reloaded notebook (a widget bar does not)

from . import distributed
from .adapters import UnsupportedMethodError
from .config import ExplainConfig
from .distributed import Journal
from .inputs import IMAGE_SUFFIXES, class_names
from .methods import MethodSpec, get_spec, method_specs
from .methods.clip_surgery import AUTHORS_CLASS_SET as AUTHORS_SURGERY_NAMES  # noqa: F401 (its name here before)
from .metrics import (AUC_DEFINITION, authors_heatmap, authors_perturbation_curves, cascading_randomisation,
                      localisation_scores, perturbation_curves_over_ties, shrink_to_640)
from .prompts import encode_texts, zero_shot_classifier
from .records import RunFolder, provenance, weights_digest
from .session import run_image_method
from .stats import bootstrap_ci, paired_difference
from .timing import Case, Meter, run_alternating

DATASETS = ("synthetic", "imagenet", "folder")
RANDOM = "random"
MEASURES = ("score", "accuracy", "probability")
TIE_MEASURES = ("score", "accuracy")  # the AUCs recomputed for every further tie seed
LOCALISATION = ("pointing", "pointing_strict", "energy", "iou", "area_share")


# ------------------------------------------------------------------------------------------ data
@dataclass
class EvalItem:
    """One explained (image, target) pair; ``load`` gives the normalised pixels (3, H, W) and the
    target mask (H, W) at the same geometry, or None; ``picture`` the native RGB picture (PIL), for the
    authors' protocol. ``label`` is the class scored (the ground truth); ``target`` the class explained
    (None: the label; ImageNet's ``--target pred``: the model's prediction, a function computed when first
    asked for, so that under torchrun each rank predicts its own items only)."""

    key: str
    label: int
    load: Callable[[], tuple[torch.Tensor, np.ndarray | None]]
    picture: Callable[[], Any] | None = None
    target: int | Callable[[], int] | None = None

    @property
    def explained(self) -> int:
        if callable(self.target):
            self.target = int(self.target())
        return self.label if self.target is None else self.target


@dataclass
class EvalSet:
    """Items, the zero-shot classifier (C, D) (unit rows) and its class names."""

    name: str
    items: list[EvalItem]
    class_names: list[str]
    classifier: torch.Tensor
    has_masks: bool
    notes: list[str] = field(default_factory=list)


def _preprocessed_mask(model, mask: np.ndarray) -> np.ndarray:
    """A boolean mask through the model's own preprocessing (resize, crop), thresholded at one half."""
    from PIL import Image

    picture = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert("RGB")
    pixels = model.preprocess(picture)
    mean, std = model.normalization
    return (pixels[0] * std[0] + mean[0]).numpy() > 0.5


def synthetic_set(model, n: int, *, offset: int | None = None) -> EvalSet:
    """``n`` held-out synthetic scenes, each with one uniquely named object and its visible mask."""
    from .synthetic.captions import class_prompts
    from .synthetic.evaluate import OFFSETS, localisation_items

    prompts, _ = class_prompts()
    index = {p: i for i, p in enumerate(prompts)}
    items = []
    for scene, caption, mask in localisation_items(n, OFFSETS["localisation"] if offset is None else offset):
        def load(scene=scene, mask=mask):
            return model.preprocess(scene.image).float(), _preprocessed_mask(model, mask)

        items.append(EvalItem(key=f"scene-{scene.seed}", label=index[caption.text], load=load,
                              picture=lambda scene=scene: scene.image.convert("RGB")))
    return EvalSet("synthetic", items, prompts, encode_texts(model, prompts), True,
                   ["held-out scenes of 2-4 objects; target: one uniquely nameable object, prompt 'a {colour} {shape}'",
                    "classifier: the 35 colour x shape prompts"])




def _native_picture(path: Path):
    from .inputs import load_image, to_rgb

    return to_rgb(load_image(path))


def _load_picture(model, path: Path):
    return model.preprocess(_native_picture(path)).float()


def imagenet_set(model, root: Path, n: int, *, templates: str = "openai", target: str = "gt",
                 cache: Path | None = None) -> EvalSet:
    """An ImageNet-style folder of class subfolders, ``n`` images taken round-robin over the classes."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    folders = sorted(p for p in Path(root).iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"{root} has no class subfolders")
    names = class_names([f.name for f in folders])
    files = [sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for f in folders]
    chosen: list[tuple[Path, int]] = []
    for depth in range(max(len(f) for f in files)):
        for label, group in enumerate(files):
            if depth < len(group) and len(chosen) < n:
                chosen.append((group[depth], label))
    if not chosen:
        raise FileNotFoundError(f"no images under {root}")
    chosen_templates = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}[templates]
    if cache is not None and cache.is_file():
        classifier = torch.load(cache, weights_only=True).to(model.device)
    else:
        classifier = zero_shot_classifier(model, names, chosen_templates).to(model.device)
        if cache is not None:
            with distributed.atomic_output(cache) as tmp:
                torch.save(classifier.cpu(), tmp)
    def prediction(path: Path) -> int:  # explain the prediction; the curves still score the ground truth
        with torch.no_grad():
            pixels = _load_picture(model, path)[None].to(model.device)
            embedding = F.normalize(model.adapter.encode_image(pixels).float(), dim=-1)
        return int((embedding @ classifier.T.to(embedding.device)).argmax(dim=-1)[0])

    items = [EvalItem(key=str(path.relative_to(root)), label=label,
                      load=lambda path=path: (_load_picture(model, path), None),
                      picture=lambda path=path: _native_picture(path),
                      target=(lambda path=path: prediction(path)) if target == "pred" else None)
             for path, label in chosen]
    return EvalSet("imagenet", items, names, F.normalize(classifier, dim=-1), False,
                   [f"{len(names)} classes x {len(chosen_templates)} templates ({templates}); target: "
                    + ("ground-truth class" if target == "gt" else "predicted class (curves scored against the "
                       "ground truth)")])


def folder_set(model, csv_path: Path, n: int | None = None) -> EvalSet:
    """Images with a CSV of ``image,prompt[,mask]`` rows."""
    from .inputs import load_image, to_rgb

    csv_path = Path(csv_path)
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"image", "prompt"} <= set(rows[0]):
        raise ValueError(f"{csv_path} needs a header with the columns image,prompt (and optionally mask)")
    rows = rows[:n] if n else rows
    prompts = sorted({row["prompt"] for row in rows})
    index = {p: i for i, p in enumerate(prompts)}
    base = csv_path.parent
    has_masks = all(row.get("mask") for row in rows)

    def load(row):
        picture = to_rgb(load_image(base / row["image"]))
        pixels = model.preprocess(picture).float()
        if not row.get("mask"):
            return pixels, None
        mask = np.asarray(load_image(base / row["mask"]).convert("L")) > 0
        if mask.shape[::-1] != picture.size:
            raise ValueError(f"mask {row['mask']} and image {row['image']} differ in size")
        return pixels, _preprocessed_mask(model, mask)

    items = [EvalItem(key=f"{i}:{row['image']}", label=index[row["prompt"]], load=lambda row=row: load(row),
                      picture=lambda row=row: to_rgb(load_image(base / row["image"])))
             for i, row in enumerate(rows)]
    return EvalSet("folder", items, prompts, encode_texts(model, prompts), has_masks,
                   [f"{len(rows)} rows of {csv_path.name}; classifier: its {len(prompts)} distinct prompts"])


# --------------------------------------------------------------------------------------- methods
def item_seed(seed: int, key: str) -> int:
    """A seed for one item: the same whatever batch or order the item comes in."""
    return seed * 1_000_003 + zlib.crc32(key.encode())


def random_maps(adapter, pixels: torch.Tensor, targets: torch.Tensor, *, seed: int = 0, keys: Sequence[str] = (),
                **_: Any):
    """A reference that explains nothing: uniform noise on the patch grid, seeded by the item key, the
    same for every target (so an item's map does not depend on the batch or the other targets)."""
    from .methods import MapOutput, cosine_scores

    ph, pw = adapter.patch_size
    grid = (pixels.shape[-2] // ph, pixels.shape[-1] // pw)
    maps = []
    for b in range(pixels.shape[0]):
        key = keys[b] if b < len(keys) else str(b)
        generator = torch.Generator().manual_seed(item_seed(seed, key))
        maps.append(torch.rand(*grid, generator=generator).expand(targets.shape[0], *grid))
    with torch.no_grad():
        scores = cosine_scores(adapter.encode_image(pixels), targets)
    return MapOutput(maps=torch.stack(maps).to(pixels.device), scores=scores)


RANDOM_SPEC = MethodSpec(name=RANDOM, image=random_maps, run_options={"seed": "seed"}, shown=False, reference=True,
                         keyed=True)
"""The evaluation's own reference, a map that explains nothing (not a method of the package: not registered)."""
_REFERENCES = {RANDOM_SPEC.name: RANDOM_SPEC}


def method_spec(name: str) -> MethodSpec:
    """The spec of a method the evaluation runs: a registered method or the evaluation's random reference."""
    return _REFERENCES[name] if name in _REFERENCES else get_spec(name)


def default_methods() -> list[str]:
    """Every registered image method, in the order they were registered, then the random reference."""
    return [spec.name for spec in method_specs() if spec.image is not None] + list(_REFERENCES)


DEFAULT_METHODS: tuple[str, ...] = tuple(default_methods())
"""The methods registered when the package was imported, then the random reference (``default_methods()``
gives the current list: what ``evaluate`` runs by default)."""


PROTOCOLS = ("project", "authors")


def method_options(name: str, config: dict[str, Any], classifier: torch.Tensor) -> dict[str, Any]:
    """The evaluation's settings for each method (documented in the summary): the options it takes from
    the run's settings (``MethodSpec.run_options``), the classifier as its class set, and under the
    authors' protocol the options of their scripts (``MethodSpec.authors``)."""
    spec = method_spec(name)
    options = spec.options_from(config, classes=classifier)
    if config.get("protocol") == "authors":
        options = {**options, **spec.authors.options}
    return options


def run_method(model, name: str, pixels: torch.Tensor, targets: torch.Tensor, options: dict[str, Any]) -> torch.Tensor:
    """Raw maps (B, K, h, w) of one method on the CPU, as ``explain_image`` runs methods (the last block;
    ``options`` may set ``mode`` and ``qk``, default faithful and raw)."""
    options = dict(options)
    config = ExplainConfig(method=name, mode=options.pop("mode", "faithful"), qk=options.pop("qk", "raw"),
                           options=options)
    spec = _REFERENCES.get(name)  # registered methods are looked up by the runner
    return run_image_method(model, config, pixels, targets, spec=spec).maps


def unsupported_methods(model, options: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The methods of ``options`` (name -> the evaluation's options) that the model's family cannot run,
    each with the reason naming method and family (``explain.method_support``, with these options)."""
    from .explain import method_support

    reasons = {name: method_support(model, name, **method_opts) for name, method_opts in options.items()
               if not method_spec(name).reference}
    return {name: reason for name, reason in reasons.items() if reason is not None}


def measure_speed(model, pixels: torch.Tensor, classifier: torch.Tensor, methods: Sequence[str],
                  options: dict[str, dict[str, Any]], prompts: Sequence[int] = (1, 8), repeats: int = 5,
                  slow_seconds: float = 5.0, budget_seconds: float = 1.0, max_runs: int = 50
                  ) -> list[dict[str, Any]]:
    """Seconds of each method on one batch with 1 and 8 prompts, and of one plain ``encode_image``
    forward of the same batch, timed in alternation with it.

    Each is timed by its fastest run (the run least disturbed by other work on a shared machine): at
    least ``repeats`` runs after a warm-up and more, up to ``max_runs``, until ``budget_seconds`` are
    spent; two runs when the warm-up took over ``slow_seconds``. Rows also hold ``ratio_k{count}``
    (``speed_ratios`` over the measured rows).
    """
    meter = Meter(model.device, collect_garbage=False)
    pixels = pixels.to(model.device)

    def forward() -> Any:
        with torch.no_grad():
            return model.adapter.encode_image(pixels)

    rows = []
    batch = pixels.shape[0]
    meter.run(forward)
    for name in tqdm(methods, desc="timing", leave=False):
        row: dict[str, Any] = {"method": name, "images": batch}
        for count in prompts:
            targets = classifier[torch.arange(count) % classifier.shape[0]]
            call = lambda: run_method(model, name, pixels, targets, options[name])  # noqa: E731
            case = Case(name, "method", call, k=count, statistic=min)
            plain = Case("plain forward", "forward", forward, k=count, statistic=min)
            run_alternating(case, plain, meter, repeats=repeats, slow_seconds=slow_seconds,
                            budget_seconds=budget_seconds, max_runs=max_runs)
            row[f"seconds_k{count}"] = case.wall
            row[f"forward_k{count}"] = plain.wall
        rows.append(row)
    for row in rows:  # the ratios against the fastest forward of this measurement, also in timing.csv
        row.update({f"ratio_k{count}": ratio for count, ratio in speed_ratios(rows, prompts)[row["method"]].items()})
    return rows


def speed_ratios(rows: Sequence[dict[str, Any]], prompts: Sequence[int] = (1, 8)) -> dict[str, dict[int, float]]:
    """Time per (image, prompt) of each method over the time per image of one plain forward, the
    forward's time being its fastest run over all rows (the same reference for every method)."""
    forward = min(float(row[f"forward_k{count}"]) for row in rows for count in prompts if f"forward_k{count}" in row)
    return {str(row["method"]): {count: (float(row[f"seconds_k{count}"]) / (int(row["images"]) * count))
                                 / (forward / int(row["images"]))
                                 for count in prompts if f"seconds_k{count}" in row}
            for row in rows}


# ------------------------------------------------------------------------------------- the run
def _curve_columns(steps: int) -> list[str]:
    return [f"{kind}_{measure}_{t:02d}" for kind in ("deletion", "insertion") for measure in MEASURES
            for t in range(steps)]


def _rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round(v, 7) if isinstance(v, float) else v for k, v in row.items()} for row in rows]


def _append_rows(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rows appended to a (small) CSV file, rewritten atomically."""
    distributed.write_csv(path, columns, distributed.read_csv(path) + _rounded(rows))


def _batches(items: list[EvalItem], batch_size: int) -> list[list[EvalItem]]:
    """Items sorted by class (stable) and cut into batches: few distinct targets per batch (the class
    scored, which is the class explained but with ``--target pred``, where it mostly is: sorting by it
    needs no prediction, so each rank predicts its own items only). These are also the work units of a
    run on several processes (batch i on rank i % N)."""
    ordered = sorted(items, key=lambda item: item.label)
    return [ordered[i:i + batch_size] for i in range(0, len(ordered), batch_size)]


def _load_batch(batch: list[EvalItem]) -> tuple[torch.Tensor, np.ndarray | None]:
    """Pixels (B, 3, H, W) and masks (B, H, W) (or None) of a batch (in a DataLoader worker when there are any)."""
    loaded = [item.load() for item in batch]
    masks = None if any(mask is None for _, mask in loaded) else np.stack([mask for _, mask in loaded])
    return torch.stack([pixels for pixels, _ in loaded]), masks


def _nothing_to_load(batch: list[EvalItem]) -> tuple[None, None]:
    return None, None


def _pending(mine, loads, done):
    """(method, items, pixels, masks) of each (batch, method) still to do, the batch loaded once for all
    its methods; items already done are left out (with their pixels and masks)."""
    for (whole, names), (pixels, masks) in zip(mine, loads):
        for name in names:
            keep = [b for b, item in enumerate(whole) if (item.key, name) not in done]
            if len(keep) == len(whole):
                yield name, whole, pixels, masks
            else:
                yield (name, [whole[b] for b in keep], None if pixels is None else pixels[keep],
                       None if masks is None else masks[keep])


def batch_maps(model, name: str, pixels: torch.Tensor, labels: Sequence[int], classifier: torch.Tensor,
               options: dict[str, Any]) -> torch.Tensor:
    """Each image's map (B, h, w) for its own target ``labels[b]`` (a row of ``classifier``).

    One call explains the batch against its distinct targets and keeps each image's own; methods with a
    paired mode (``MethodSpec.paired``) explain image b against target b only (``paired=True``).
    """
    if method_spec(name).paired:
        return run_method(model, name, pixels, classifier[list(labels)], {**options, "paired": True})[:, 0]
    distinct = sorted(set(labels))
    column = [distinct.index(label) for label in labels]
    maps = run_method(model, name, pixels, classifier[distinct], options)
    return maps[torch.arange(len(labels)), torch.tensor(column)]


def tie_seeds_of(seed: int, key: str, count: int) -> list[int]:
    """The tie seeds of one item: the first is the one the main AUC uses; all are shared by every method."""
    return [item_seed(seed + 7919 * (t + 1), key) for t in range(count)]


def _curve_row(row: dict[str, Any], curves, steps: int, suffix: str = "", measures: Sequence[str] = MEASURES,
               b: int = 0, with_points: bool = True) -> None:
    """Write one image's AUCs (and curve points) of ``curves`` into ``row``."""
    for kind in ("deletion", "insertion"):
        for measure in measures:
            row[f"{kind}_auc_{measure}{suffix}"] = float(curves.auc(kind, measure)[b])
            if with_points:
                values = getattr(curves, kind)[measure]
                for t in range(steps):
                    row[f"{kind}_{measure}_{t:02d}"] = float(values[b, t])


def project_faithfulness(model, pixels: torch.Tensor, maps: torch.Tensor, batch: Sequence[EvalItem],
                         classifier: torch.Tensor, rows: list[dict[str, Any]], *, seed: int, tie_seeds: int,
                         logit_scale: float, steps: int) -> None:
    """The project's deletion and insertion (preprocessed pixels, one random picture per image, ties by
    seeded permutations) for a batch, once per tie seed (pictures two tie orders make alike encoded once);
    the first tie seed gives the main columns."""
    mean, std = model.normalization
    keys = [item.key for item in batch]
    per_tie = perturbation_curves_over_ties(
        model.adapter, pixels.to(model.device), maps, classifier, [item.label for item in batch], mean=mean, std=std,
        seed=[item_seed(seed, key) for key in keys], logit_scale=logit_scale, ties="random",
        tie_seeds=[[tie_seeds_of(seed, key, tie_seeds)[t] for key in keys] for t in range(tie_seeds)])
    for t, curves in enumerate(per_tie):
        for b, row in enumerate(rows):
            if t == 0:
                _curve_row(row, curves, steps, b=b)
            else:
                _curve_row(row, curves, steps, suffix=f"_tie{t}", measures=TIE_MEASURES, b=b, with_points=False)


def authors_maps(model, name: str, item: EvalItem, picture, classifier: torch.Tensor,
                 options: dict[str, Any]) -> np.ndarray:
    """One item's heat map as the authors' ``generate_hm`` makes it: the method at native resolution (or,
    where their scripts do, on the model's centre crop: ``AuthorsProtocol.resolution``), min-max normalised,
    resized to the picture (through the model's input size where the method's own code upsamples)."""
    from .inputs import prepare_images

    spec = method_spec(name)
    # the authors explain the (640-shrunk) picture at its full native size: no patch cap
    pixels = prepare_images(model, picture, spec.authors.resolution, max_patches=sys.maxsize)[0].pixels[None]
    extra = {"keys": [item.key]} if spec.keyed else {}
    grid_map = batch_maps(model, name, pixels, [item.explained], classifier, {**options, **extra})[0]
    via = tuple(model.adapter.image_size) if spec.authors.upsampled else None
    return authors_heatmap(grid_map, (picture.size[1], picture.size[0]), via=via)


def authors_picture(item: EvalItem):
    """The native picture the authors' scripts perturb: shrunk to a 640 short side when larger."""
    if item.picture is None:
        raise ValueError(f"--protocol authors needs the native pictures; {item.key} has none")
    return shrink_to_640(item.picture())


class AuthorsTargets:
    """What the authors' scripts explain each image against (``AuthorsProtocol``): the zero-shot
    classifier's row, or the class name, bare or embedded with a method's prompt ensemble (CLIP Surgery's
    ``encode_text_with_prompt_ensemble``); a method with a class set gets it after the target, embedded
    the same way."""

    def __init__(self, model, class_names: Sequence[str], methods: Sequence[str]) -> None:

        def embed(names: Sequence[str], templates: tuple[str, ...]) -> torch.Tensor:
            if templates:
                return zero_shot_classifier(model, list(names), templates, progress=False)
            return encode_texts(model, list(names))

        # the class names by the templates they are embedded with; the class sets by (names, templates)
        self.tables: dict[tuple[str, ...], torch.Tensor] = {}
        self.sets: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}
        for name in methods:
            authors = method_spec(name).authors
            if authors.target == "class_name" and authors.templates not in self.tables:
                self.tables[authors.templates] = embed(class_names, authors.templates)
            if authors.class_set and (authors.class_set, authors.templates) not in self.sets:
                self.sets[authors.class_set, authors.templates] = embed(authors.class_set, authors.templates)

    def of(self, name: str, item: EvalItem, classifier: torch.Tensor,
           options: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """(the (C, D) table whose row ``item.explained`` is explained, the options) of one method and item."""
        spec = method_spec(name)
        authors = spec.authors
        table = self.tables[authors.templates] if authors.target == "class_name" else classifier
        if authors.class_set:
            own = table[item.explained][None]
            options = {**options, spec.class_set: torch.cat([own, self.sets[authors.class_set, authors.templates]])}
        return table, options


def authors_faithfulness(model, name: str, item: EvalItem, picture, classifier: torch.Tensor, row: dict[str, Any],
                         options: dict[str, Any], *, seed: int, logit_scale: float, steps: int,
                         targets: AuthorsTargets | None = None) -> None:
    """The Grad-ECLIP authors' deletion and insertion for one item (see ``authors_perturbation_curves``),
    on its ``authors_picture``: the map explains what their scripts explain (``targets``, default the
    classifier's row); the curves score the classifier's classes."""
    table, map_options = (classifier, options) if targets is None else targets.of(name, item, classifier, options)
    heatmap = authors_maps(model, name, item, picture, table, map_options)
    curves = authors_perturbation_curves(model.adapter.encode_image, lambda p: model.preprocess(p).float(), picture,
                                         heatmap, classifier.to(model.device), item.label,
                                         seed=item_seed(seed, item.key), ties="numpy", logit_scale=logit_scale)
    _curve_row(row, curves, steps)


def evaluate(model, data: EvalSet, out: str | Path, *, methods: Sequence[str] | None = None,
             batch_size: int = 16, tolerance: float = 4.0, rise_masks: int = 2000, rise_centre: bool = True,
             m2ib_steps: int = 10,
             m2ib_samples: int = 10, seed: int = 0, sanity_images: int = 8, sanity_methods: Sequence[str] | None = None,
             timing_images: int = 4, timing_repeats: int = 5, faithfulness: bool = True, command: str = "",
             overwrite: bool = False, progress: bool = True, protocol: str = "project",
             tie_seeds: int = 3, timing_budget: float = 1.0, workers: int = 0,
             context: distributed.Context | None = None) -> dict[str, Any]:
    """Run every method on every item of ``data``, write the results into ``out`` and return the summary.

    ``protocol``: "project" (this project's deletion and insertion on the preprocessed pixels, ties by
    seeded random permutations, repeated over ``tie_seeds`` tie seeds to show how much the order of ties
    moves an AUC) or "authors" (the Grad-ECLIP authors' scripts exactly, see ``authors_faithfulness``;
    no localisation). ``timing_budget``: seconds of timed runs per fast method and prompt count (see
    ``measure_speed``). Resumes from ``out`` when it holds a run with the same settings (items already
    done are kept); ``overwrite`` starts afresh. ``workers``: DataLoader worker processes that load the
    images. ``context``: this process's place in a run on several processes (``distributed.init``); every
    rank calls ``evaluate`` with the same arguments, and each returns the summary of the merged run.

    ``methods``: None for every method the model's family can run (``default_methods()``; those its adapter
    refuses, e.g. M2IB on a ResNet, are left out and named in the config and the summary); a method
    named here that the family cannot run is an error before any work. ``sanity_methods`` likewise.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if tie_seeds < 1:
        raise ValueError("tie_seeds must be at least 1")
    tie_seeds = 1 if protocol == "authors" else tie_seeds
    context = context or distributed.Context(device=model.device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    requested = methods is not None
    runnable = default_methods()
    methods = list(runnable if methods is None else methods)
    unknown = [m for m in methods + list(sanity_methods or []) if m not in runnable]
    if unknown:
        known = sorted(set(runnable) - set(_REFERENCES)) + list(_REFERENCES)
        raise ValueError(f"unknown methods {unknown}; available: {known}")
    config = {"dataset": data.name, **provenance(model, weights=True),
              "tolerance": tolerance, "batch_size": batch_size, "rise_masks": rise_masks,
              "rise_centre": rise_centre, "m2ib_steps": m2ib_steps, "m2ib_samples": m2ib_samples, "seed": seed,
              "faithfulness": faithfulness,
              "classes": len(data.class_names), "sanity_images": sanity_images, "timing_images": timing_images,
              "timing_repeats": timing_repeats, "protocol": protocol, "tie_seeds": tie_seeds,
              **({"timing_budget": timing_budget} if timing_budget != 1.0 else {})}
    options = {name: method_options(name, config, data.classifier)
               for name in dict.fromkeys(methods + list(sanity_methods or []))}
    run_folder = RunFolder(out, "config.json", what="a run",
                           outputs=("per_image.csv", "timing.csv", "sanity.csv", "summary.md", "run.json"))
    previous = run_folder.previous(overwrite)
    if previous is not None and run_folder.matches({k: v for k, v in previous.items() if k != "not_run"}, config):
        refused = dict(previous.get("not_run", {}))  # a resumed run: what its start found
    else:
        refused = unsupported_methods(model, options)
    named = [m for m in methods if requested and m in refused] + [m for m in sanity_methods or [] if m in refused]
    if named:
        raise UnsupportedMethodError("; ".join(refused[m] for m in dict.fromkeys(named))
                                     + ". Leave them out of the methods (by default every method the family can "
                                     "run is evaluated).")
    methods = [m for m in methods if m not in refused]
    if refused:
        config["not_run"] = refused
        if context.is_main and progress:
            print("not run on this model: " + "; ".join(refused.values()), file=sys.stderr)
    context.check_same("model weights", config["weights"])
    parts = out / distributed.PARTS
    # fewer batches than ranks: cut finer so that every rank works (the size used is recorded)
    unit = distributed.unit_size(len(data.items), batch_size, context.world_size)
    batches = _batches(data.items, unit)

    def prepare() -> None:  # on rank 0, before any rank reads what is done
        if previous is not None:  # read above, before anything was written
            run_folder.check(previous, config)
        elif overwrite:
            run_folder.clear()
            Journal.remove(parts, "per_image")
            Journal.remove(parts, "sanity")
        record = context.record(distributed.items_per_rank([len(b) for b in batches], context.world_size),
                                **({"batch_size": unit} if unit != batch_size else {}))
        distributed.atomic_write_text(run_folder.record, json.dumps({**config, "distributed": record}, indent=2) + "\n")

    context.on_main(prepare)
    logit_scale = model.adapter.logit_scale
    steps = 11

    # speed, side by side with one plain forward: on rank 0 while the other ranks wait
    timing_path = out / "timing.csv"
    if context.is_main:
        timed = {row["method"] for row in distributed.read_csv(timing_path)}
        to_time = [m for m in methods if m not in timed]
        if to_time and timing_images > 0:
            pixels = torch.stack([item.load()[0] for item in data.items[:timing_images]])
            rows = measure_speed(model, pixels, data.classifier, to_time, options, repeats=timing_repeats,
                                 budget_seconds=timing_budget)
            _append_rows(timing_path, rows, list(rows[0]))
    context.barrier()

    # per-image metrics: this rank's batches, results appended to its part file as they finish
    per_image = out / "per_image.csv"
    done = {(row["key"], row["method"]) for row in distributed.read_csv(per_image) + Journal.read(parts, "per_image")}
    localise = data.has_masks and protocol == "project"
    columns = ["key", "label", "target", "prompt", "method"] + (list(LOCALISATION) if localise else [])
    if faithfulness:
        columns += [f"{kind}_auc_{m}" for kind in ("deletion", "insertion") for m in MEASURES] + _curve_columns(steps)
        columns += [f"{kind}_auc_{m}_tie{t}" for t in range(1, tie_seeds) for kind in ("deletion", "insertion")
                    for m in TIE_MEASURES]
    mine = [(batch, [name for name in methods if any((item.key, name) not in done for item in batch)])
            for _, batch in context.shard(batches)]
    mine = [(batch, names) for batch, names in mine if names]
    journal = Journal(parts, "per_image", context.rank)
    # the bar counts images (an image when its last method is done), with the global rate in images per second
    todo = sum(any((item.key, name) not in done for name in names) for batch, names in mine for item in batch)
    started, cpu_started, computed = time.perf_counter(), time.process_time(), 0
    bar = context.progress(todo, desc="images", unit="image", disable=not progress)
    remaining = {item.key: sum((item.key, name) not in done for name in names) for batch, names in mine for item in batch}

    def finished(items: Sequence[EvalItem]) -> None:
        complete = 0
        for item in items:
            remaining[item.key] -= 1
            complete += remaining[item.key] == 0
        if complete:
            bar.update(complete)
    # the authors' protocol preprocesses each native picture itself: nothing to load ahead
    loader = _load_batch if protocol == "project" else _nothing_to_load
    authors_targets = AuthorsTargets(model, data.class_names, methods) if protocol == "authors" and mine else None
    loads = distributed.load_units([batch for batch, _ in mine], loader, workers=workers, device=model.device)
    pictures: dict[str, Any] = {}
    for name, batch, pixels, masks in _pending(mine, loads, done):
        bar.note(name)
        rows = [{"key": item.key, "label": item.label, "target": item.explained,
                 "prompt": data.class_names[item.explained], "method": name} for item in batch]
        if protocol == "authors":
            if faithfulness:
                if set(pictures) != {item.key for item in batch}:  # each batch's pictures are decoded once
                    pictures = {item.key: authors_picture(item) for item in batch}
                for item, row in zip(batch, rows):
                    authors_faithfulness(model, name, item, pictures[item.key], data.classifier, row, options[name],
                                         seed=seed, logit_scale=logit_scale, steps=steps, targets=authors_targets)
            journal.append(_rounded(rows))
            computed += len(rows)
            finished(batch)
            continue
        extra = {"keys": [item.key for item in batch]} if method_spec(name).keyed else {}
        maps = batch_maps(model, name, pixels, [item.explained for item in batch], data.classifier,
                          {**options[name], **extra})
        if localise:
            scores = localisation_scores(maps, masks, tolerance=tolerance)
            for b, row in enumerate(rows):
                row.update({name: float(scores[name][b]) for name in LOCALISATION})
        if faithfulness:
            project_faithfulness(model, pixels, maps, batch, data.classifier, rows, seed=seed, tie_seeds=tie_seeds,
                                 logit_scale=logit_scale, steps=steps)
        journal.append(_rounded(rows))
        computed += len(rows)
        finished(batch)
    phase = context.gather({"computed": computed, "seconds": time.perf_counter() - started,
                            "cpu_seconds": time.process_time() - cpu_started})
    bar.close()
    if context.is_main:  # every rank has finished its share: merge, in the order one process writes
        order = {(item.key, name): (b, m, p) for b, batch in enumerate(batches) for m, name in enumerate(methods)
                 for p, item in enumerate(batch)}
        distributed.merge_table(per_image, columns, Journal.read(parts, "per_image"),
                                identity=lambda row: (row["key"], row["method"]),
                                order=lambda row: order.get((row["key"], row["method"])), required=set(order))
        Journal.remove(parts, "per_image")

    # the cascading randomisation sanity check: method i of the list on rank i % N
    sanity_path = out / "sanity.csv"
    sanity_all = [m for m in (sanity_methods if sanity_methods is not None else methods)
                  if not method_spec(m).reference]
    checked = {row["method"] for row in distributed.read_csv(sanity_path) + Journal.read(parts, "sanity")}
    sanity_mine = [name for _, name in context.shard(sanity_all) if name not in checked]
    sanity_journal = Journal(parts, "sanity", context.rank)
    if sanity_images > 0 and sanity_mine:
        chosen = data.items[:sanity_images]
        pixels = torch.stack([item.load()[0] for item in chosen]).to(model.device)
        labels = sorted({item.explained for item in chosen})
        targets = data.classifier[labels]
        column = [labels.index(item.explained) for item in chosen]
        for name in tqdm(sanity_mine, desc="sanity check", disable=not (progress and context.is_main)):
            fn = lambda m, p, t, name=name: run_method(m, name, p, t, options[name])  # noqa: E731
            result = cascading_randomisation(model, pixels, targets, fn, seed=seed)
            rows = []
            for depth, (stage, rho, similarity) in enumerate(zip(result.stages, result.spearman, result.ssim)):
                for b, item in enumerate(chosen):
                    rows.append({"method": name, "depth": depth, "stage": stage, "key": item.key,
                                 "spearman": float(rho[b, column[b]]), "ssim": float(similarity[b, column[b]])})
            sanity_journal.append(_rounded(rows))
    context.gather(None)

    if context.is_main:
        sanity_rows = Journal.read(parts, "sanity")
        if sanity_rows or sanity_path.exists():
            rank = {name: m for m, name in enumerate(sanity_all)}
            distributed.merge_table(sanity_path, ["method", "depth", "stage", "key", "spearman", "ssim"], sanity_rows,
                                    identity=lambda row: (row["method"], row["depth"], row["key"]),
                                    order=lambda row: (rank[row["method"]],) if row["method"] in rank else None,
                                    required=set(sanity_all) if sanity_images > 0 else set(),
                                    required_key=lambda row: row["method"])
        Journal.remove(parts, "sanity")
        run_folder.write_run(world_size=context.world_size, device=model.device, unit="results", count=len(order),
                             phases=phase)
        summary = summarise(out, data, config, command=command, methods=methods)
        distributed.atomic_write_text(out / "summary.md", summary["markdown"])
        plot_results(out, summary)
    context.barrier()
    if not context.is_main:
        summary = summarise(out, data, config, command=command, methods=methods)
    return summary


# ----------------------------------------------------------------------------------- reporting
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


def summarise(out: Path, data: EvalSet, config: dict[str, Any], *, command: str = "",
              methods: Sequence[str] | None = None) -> dict[str, Any]:
    """Read the CSVs of a run and build the markdown summary and the numbers the plots need (``methods``
    in this order; by default ``default_methods()``)."""
    import pandas as pd

    frame = pd.read_csv(out / "per_image.csv") if (out / "per_image.csv").exists() else pd.DataFrame()
    timing = pd.read_csv(out / "timing.csv") if (out / "timing.csv").exists() else pd.DataFrame()
    sanity = pd.read_csv(out / "sanity.csv") if (out / "sanity.csv").exists() else pd.DataFrame()
    keys = {item.key for item in data.items}
    if not frame.empty:
        frame = frame[frame["key"].astype(str).isin(keys)]
    if not sanity.empty:
        sanity = sanity[sanity["key"].astype(str).isin(keys)]
    methods = [m for m in (default_methods() if methods is None else methods)
               if not frame.empty and m in set(frame["method"])]
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
    protocol = config.get("protocol", "project")
    has_masks = data.has_masks and protocol == "project"
    lines += [f"Protocol: {PROTOCOL_TEXT[protocol]}", ""]
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
    header = ["method"] + [title for _, title, _ in columns] + ["time / forward (K=1)", "time / forward (K=8)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
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
    lines += ["", "Cells: mean [95% bootstrap confidence interval, 1000 resamples over images]."]
    if has_masks:
        lines.append(f"Area share of the target masks (what a uniform map scores in the energy PG): "
                     f"{100 * frame['area_share'].mean():.1f}%.")
    if config["faithfulness"]:
        lines += ["", f"**AUC.** {AUC_DEFINITION} 'score' is the ground-truth class's cosine with the image; "
                  f"'top-1' the share of images whose highest-scoring class (of {config['classes']}) is the "
                  "ground truth (also when the map explains the predicted class)."]
        if protocol == "authors":
            lines += ["", "Under the authors' protocol insertion is scored at 5% ... 50% (its AUC over these ten "
                      "points) and on the whole picture; top-1 accuracy at each point, mean over images, as their "
                      "scripts print it:", ""] + _point_table(frame, methods)
        lines += _tie_table(frame, methods, int(config.get("tie_seeds", 1)))
    if not timing.empty:
        lines += ["", f"**Time.** Seconds per (image, prompt) divided by seconds per image of one plain "
                  f"`encode_image` forward, measured side by side on the same batch of "
                  f"{int(timing['images'].iloc[0])} images with 1 and with 8 prompts per image: every run of a "
                  "method timed in alternation with the forward, each by its fastest run (at least "
                  f"{config.get('timing_repeats', 5)} runs after a warm-up, more up to {config.get('timing_budget', 1.0):g} s "
                  "of runs; 2 runs for "
                  "methods slower than 5 s), the run least disturbed by other work on the machine; the forward's "
                  "fastest run over the whole measurement is the common reference: "
                  f"{1000 * min(timing['forward_k1'].min(), timing['forward_k8'].min()):.1f} ms for the batch. "
                  "Below 1 with 8 prompts: the prompts share the passes."]
    centred = (" with the mean score subtracted (`centre=True`: the same map up to a constant in expectation, "
               "without the masks' coverage noise)") if config.get("rise_centre") else " (plain sum)"
    grad_eclip = ("last block, official mode (one head), q and k through out_proj, as the authors' evaluation "
                  "scripts" if protocol == "authors" else "last block, faithful mode")
    lines += ["", f"Settings: RISE {config['rise_masks']} masks (8 x 8 cells, p = 0.5, seed {config['seed']}){centred}; "
              f"M2IB {config['m2ib_steps']} steps x {config['m2ib_samples']} samples, no clamp (as M2IB's own code); "
              f"CLIP Surgery's class set: the {config['classes']} classifier prompts; GAME: the logit "
              "exp(logit_scale) x cos differentiated (as Chefer et al.), all blocks (game) and the last block "
              f"(game_last); LeGrad: the last two blocks (its default); Grad-ECLIP: {grad_eclip}; random: uniform "
              "noise on the patch grid."
              + (" Authors' variants: raw_attention, maskclip and grad_cam variant='authors', rollout from the last "
                 "block; game, game_last, rollout, clip_surgery and m2ib explained on the model's centre crop and "
                 "stretched over the picture (as the authors' scripts do), the others at native resolution."
                 if protocol == "authors" else "")]
    if config.get("not_run"):
        lines += ["", "Not run on this model (its family cannot run them): "
                  + "; ".join(str(reason) for reason in config["not_run"].values()) + "."]
    claims = []
    if has_masks and "grad_eclip" in methods:
        base = frame[frame["method"] == "grad_eclip"].set_index("key")
        lines += ["", "Pointing game (with tolerance), paired difference Grad-ECLIP minus other, percentage "
                  "points [95% paired bootstrap CI]:", ""]
        for other in methods:
            if other == "grad_eclip":
                continue
            rows = frame[frame["method"] == other].set_index("key")
            keys = base.index.intersection(rows.index)
            diff = paired_difference(base.loc[keys, "pointing"].to_numpy(), rows.loc[keys, "pointing"].to_numpy())
            claims.append({"other": other, "difference": diff, "n": len(keys)})
            lines.append(f"- vs {other}: {_fmt(*diff, percent=True)} (n = {len(keys)})")
    sanity_table = []
    if not sanity.empty:
        stages = sanity[["depth", "stage"]].drop_duplicates().sort_values("depth")
        lines += ["", "Cascading randomisation (Spearman / SSIM of each map with the original, mean over "
                  f"{sanity['key'].nunique()} images; stages cumulative from the top):", "",
                  "| method | " + " | ".join(stages["stage"]) + " |", "|" + "---|" * (len(stages) + 1)]
        for name in [m for m in methods if m in set(sanity["method"])]:
            rows = sanity[sanity["method"] == name]
            cells = []
            for depth in stages["depth"]:
                at = rows[rows["depth"] == depth]
                cells.append(f"{at['spearman'].mean():.2f} / {at['ssim'].mean():.2f}")
                sanity_table.append({"method": name, "depth": int(depth), "stage": str(at["stage"].iloc[0]),
                                     "spearman": float(at["spearman"].mean()),
                                     "ssim": float(at["ssim"].mean())})
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Files: per_image.csv (every item x method, with the curves), timing.csv, sanity.csv, "
              "curves_deletion.png, curves_insertion.png, auc_bars.png, sanity.png.", ""]
    curves = {}
    if config["faithfulness"] and not frame.empty:
        for kind in ("deletion", "insertion"):
            curves[kind] = {name: frame[frame["method"] == name][[f"{kind}_score_{t:02d}" for t in range(11)]]
                            .to_numpy().mean(axis=0) for name in methods}
    return {"markdown": "\n".join(lines), "table": table, "claims": claims, "curves": curves,
            "fractions": curve_fractions(protocol), "sanity": sanity_table, "methods": methods}


def curve_fractions(protocol: str) -> dict[str, list[float]]:
    """Where the 11 scored points of each curve lie (share of the pixels changed): 0% ... 50% for both
    curves in the project's protocol; under the authors' protocol insertion is scored at 5% ... 50% and
    on the full picture."""
    points = [round(0.05 * t, 2) for t in range(11)]
    return {"deletion": points, "insertion": points[1:] + [1.0] if protocol == "authors" else points}


def plot_results(out: Path, summary: dict[str, Any]) -> None:
    """Mean deletion and insertion curves per method, a bar chart of AUCs, and the sanity curves."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fractions = summary.get("fractions") or curve_fractions("project")
    palette = plt.get_cmap("tab20").colors
    styles = ("-", "--", ":", "-.")

    def style(index: int, name: str) -> dict[str, Any]:
        return {"color": palette[(2 * index) % 20 + (index // 10) % 2], "linestyle": styles[index % 4],
                "linewidth": 2.5 if name == "grad_eclip" else 1.3, "marker": "o", "markersize": 3, "label": name}

    for kind, curves in summary["curves"].items():
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for index, (name, curve) in enumerate(curves.items()):
            ax.plot(100 * np.asarray(fractions[kind]), curve, **style(index, name))
        ax.set_xlabel(f"pixels {'deleted' if kind == 'deletion' else 'inserted'} (%)")
        ax.set_ylabel("target score (cosine)")
        ax.set_title(f"{kind} curves (mean over images; {'lower' if kind == 'deletion' else 'higher'} is better)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(out / f"curves_{kind}.png", dpi=120)
        plt.close(fig)
    table = summary["table"]
    if table and "deletion_auc_score" in next(iter(table.values())):
        names = list(table)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, column, title in zip(axes, ("deletion_auc_score", "insertion_auc_score"),
                                     ("deletion AUC (lower is better)", "insertion AUC (higher is better)")):
            means = np.array([table[n][column][0] for n in names])
            errors = np.array([[table[n][column][0] - table[n][column][1], table[n][column][2] - table[n][column][0]]
                               for n in names]).T
            ax.bar(range(len(names)), means, yerr=errors, capsize=3, color="tab:blue" if "del" in column else "tab:orange")
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(out / "auc_bars.png", dpi=120)
        plt.close(fig)
    if summary["sanity"]:
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for index, name in enumerate(dict.fromkeys(row["method"] for row in summary["sanity"])):
            rows = [r for r in summary["sanity"] if r["method"] == name]
            ax.plot([r["depth"] for r in rows], [r["spearman"] for r in rows], **style(index, name))
        stages = {r["depth"]: r["stage"] for r in summary["sanity"]}
        ax.set_xticks(sorted(stages))
        ax.set_xticklabels([stages[d] for d in sorted(stages)], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("randomised from the top down, cumulatively, up to")
        ax.set_ylabel("Spearman with the original map")
        ax.set_title("cascading randomisation (a sound map falls)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.tight_layout()
        fig.savefig(out / "sanity.png", dpi=120)
        plt.close(fig)


PLOTS = ("curves_deletion.png", "curves_insertion.png", "auc_bars.png", "sanity.png")


def write_doc(summary: dict[str, Any], out: str | Path, doc: str | Path) -> Path:
    """The summary as a committed document: the markdown with its plots and the run's CSV files copied
    into ``<doc stem>/`` beside it, the plots shown inline."""
    import shutil

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


# ---------------------------------------------------------------------------------- command line

def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace,
                argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``gradeclip evaluate`` on its parsed arguments (on every rank under torchrun); the options are declared in
    ``cli.py``. ``argv``: the command's own arguments, for the command line the summary records."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"outputs/eval-{args.dataset}")
    context = distributed.init(args.device, timeout_minutes=args.dist_timeout)
    try:
        with context.guard(out):  # a failing rank records its error for the others
            summary = _run(parser, args, argv, out, context)
    finally:
        context.close()
    if context.is_main:
        print(summary["markdown"])
        print(f"\nwritten to {out}" + (f" and {args.doc}" if args.doc else ""), file=sys.stderr)
    return summary


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None, out: Path,
         context: distributed.Context) -> dict[str, Any]:
    from .loading import load_model

    model = load_model(args.model, args.pretrained, device=context.device, precision=args.precision)
    if args.dataset == "synthetic":
        data = synthetic_set(model, args.n)
    elif args.data is None:
        parser.error(f"--dataset {args.dataset} needs --data")
    elif args.dataset == "imagenet":
        out.mkdir(parents=True, exist_ok=True)
        with context.main_first():  # rank 0 builds the classifier cache, the other ranks read it
            data = imagenet_set(model, Path(args.data), args.n, templates=args.templates, target=args.target,
                                cache=out / f"classifier-{args.templates}-{weights_digest(model.model)}.pt")
    else:
        data = folder_set(model, Path(args.data), args.n)
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    sanity_methods = None if args.sanity_methods is None else [m.strip() for m in args.sanity_methods.split(",")]
    command = f"{parser.prog} " + " ".join(argv if argv is not None else sys.argv[1:])
    workers = args.workers if args.workers is not None else (4 if model.device.type == "cuda" else 0)
    summary = evaluate(model, data, out, methods=methods, batch_size=args.batch_size, tolerance=args.tolerance,
                       rise_masks=args.rise_masks, rise_centre=not args.rise_plain, m2ib_steps=args.m2ib_steps,
                       m2ib_samples=args.m2ib_samples,
                       seed=args.seed, sanity_images=args.sanity_images, sanity_methods=sanity_methods,
                       timing_images=args.timing_images, timing_repeats=args.timing_repeats,
                       faithfulness=not args.no_faithfulness, command=command.strip(), overwrite=args.overwrite,
                       protocol=args.protocol, tie_seeds=args.tie_seeds, workers=workers, context=context)
    if args.doc and context.is_main:
        write_doc(summary, out, args.doc)
    return summary


if __name__ == "__main__":  # the `gradeclip evaluate` alias (cli.py declares its options)
    from torch.distributed.elastic.multiprocessing.errors import record

    from .cli import alias

    # under torchrun, a failing rank's traceback (of an error that is not a user's) goes into torchrun's report
    sys.exit(record(alias)("evaluate"))
