"""The data an evaluation explains: ``EvalItem`` (an image, its label and the class explained) and ``EvalSet``
(items with the zero-shot classifier), built from the synthetic world, an ImageNet-style folder of class
subfolders or a CSV of ``image,prompt[,mask]`` rows (see the package's docstring for each)."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..jobs.files import atomic_output
from ..inputs import IMAGE_SUFFIXES, class_names, load_image, to_rgb
from ..methods.scores import is_classifier
from ..prompts import encode_texts, folder_classes, prompt_targets, zero_shot_classifier

DATASETS = ("synthetic", "imagenet", "folder")


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
    from ..synthetic.captions import class_prompts
    from ..synthetic.evaluate import OFFSETS, localisation_items

    if is_classifier(model.adapter):
        raise ValueError(f"the synthetic data set explains the 35 colour x shape prompts, texts that an image "
                         f"classifier ({model.family}) does not take: evaluate it on an ImageNet-style folder of its "
                         "classes (--dataset imagenet --data FOLDER)")
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


def _native_picture(path: Path) -> Any:
    return to_rgb(load_image(path))


def _load_picture(model, path: Path) -> torch.Tensor:
    return model.preprocess(_native_picture(path)).float()


def imagenet_set(model, root: Path, n: int, *, templates: str = "openai", target: str = "gt",
                 cache: Path | None = None) -> EvalSet:
    """An ImageNet-style folder of class subfolders, ``n`` images taken round-robin over the classes."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    folders = sorted(p for p in Path(root).iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"{root} has no class subfolders")
    adapter = model.adapter
    if is_classifier(adapter):  # the folders are some of the classifier's classes, scored among all of them
        indices = folder_classes(adapter.labels, [f.name for f in folders])
        names = list(adapter.labels)
    else:
        indices = list(range(len(folders)))
        names = class_names([f.name for f in folders])
    files = [sorted(p for p in f.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for f in folders]
    chosen: list[tuple[Path, int]] = []
    for depth in range(max(len(f) for f in files)):
        for label, group in enumerate(files):
            if depth < len(group) and len(chosen) < n:
                chosen.append((group[depth], indices[label]))
    if not chosen:
        raise FileNotFoundError(f"no images under {root}")
    chosen_templates = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}[templates]
    if is_classifier(adapter):  # one-hot rows over its classes: its own scores are its logits
        classifier = torch.eye(len(names), device=model.device)
    elif cache is not None and cache.is_file():
        classifier = torch.load(cache, weights_only=True).to(model.device)
    else:
        classifier = zero_shot_classifier(model, names, chosen_templates).to(model.device)
        if cache is not None:
            with atomic_output(cache) as tmp:
                torch.save(classifier.cpu(), tmp)
    def prediction(path: Path) -> int:  # explain the prediction; the curves still score the ground truth
        with torch.no_grad():
            pixels = _load_picture(model, path)[None].to(model.device)
            embedding = F.normalize(adapter.encode_image(pixels).float(), dim=-1)
        return int((embedding @ classifier.T.to(embedding.device)).argmax(dim=-1)[0])

    items = [EvalItem(key=str(path.relative_to(root)), label=label,
                      load=lambda path=path: (_load_picture(model, path), None),
                      picture=lambda path=path: _native_picture(path),
                      target=(lambda path=path: prediction(path)) if target == "pred" else None)
             for path, label in chosen]
    described = (f"{len(folders)} class folders, each one of the {len(names)} classes of the {model.family}"
                 if is_classifier(adapter) else f"{len(names)} classes x {len(chosen_templates)} templates ({templates})")
    return EvalSet("imagenet", items, names, F.normalize(classifier, dim=-1), False,
                   [f"{described}; target: " + ("ground-truth class" if target == "gt" else "predicted class (curves "
                                                "scored against the ground truth)")])


def folder_set(model, csv_path: Path, n: int | None = None) -> EvalSet:
    """Images with a CSV of ``image,prompt[,mask]`` rows."""
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
    return EvalSet("folder", items, prompts, prompt_targets(model, prompts)[0], has_masks,
                   [f"{len(rows)} rows of {csv_path.name}; classifier: its {len(prompts)} distinct prompts"])

