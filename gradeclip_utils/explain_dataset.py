"""Grad-ECLIP maps of every image of a folder, written to sharded safetensors files, on one process or many.

    gradeclip explain-dataset FOLDER --prompts prompts.txt --out maps/   # every image x every prompt
    gradeclip explain-dataset VAL --classes --out maps/                   # ImageNet-style tree: each image x its class
    gradeclip explain-dataset VAL --classes all --out maps/               # each image x every class
    gradeclip explain-dataset VAL --classes --score probability --out maps/   # its class's zero-shot probability
    gradeclip explain-dataset FOLDER --prompts pairs.txt --score contrast --out maps/   # lines "a | b"
    torchrun --nproc-per-node 8 -m gradeclip_utils.explain_dataset VAL --classes --out maps/

``FOLDER`` is searched recursively for images; an image's key is its path relative to ``FOLDER``.
``--prompts``: a text file with one prompt per line (blank lines skipped). ``--classes``: the first-level
folders are the classes (ImageNet's 1000 wnid folders get the standard class names, other folders their
own name with ``_`` as a space); a class's text embedding is the mean of its normalised template
embeddings (``--templates``: OpenAI's 80 or the simple ones), renormalised, as in the evaluation.

``--score``: what the maps explain, as ``explain_image``'s ``score`` (docs/method.md section 1.1): left
out, the model's own default (a CLIP's cosine, SigLIP's logit, BLIP's ITC cosine, a classifier's logit); the
cosine, the logit, the probability (each prompt's softmax among all the prompts, or each class's
among all the classes: with ``--classes`` (own) an image's map is its class's probability among every
class, as ``explain_image`` against all the classes gives it, at the cost of its own class's map only) or
the contrast, whose pairs come from the ``--prompts`` file, one pair a line, the two prompts separated by
``|`` ("a red circle | a blue circle": what makes each image match a red circle rather than a blue one);
classes give no pairs, so the contrast is refused with ``--classes``.

Images are explained at native resolution by default (aspect kept, sides rounded to the patch size, at
most ``--max-patches`` patches), exactly as ``explain_image`` explains one image: the same pixels, the
same method call (``--method``, default Grad-ECLIP, ``--layers``, ``--mode``, ``--qk``, ``--score``).
Images are grouped by patch grid and cut into batches of ``--batch-size``; the batches are packed in order
into shards of at most ``--shard-size`` images. Shards are the work units: shard j is computed on rank
j % N, so the files are the same whatever the number of processes.

The output folder:

* ``index.json``: the settings, the prompts, every image (key, label, shard, patch grid, input size,
  whether it was downscaled to ``--max-patches``), the shards and the ``distributed`` record;
  ``"complete": true`` once every shard is written (rank 0 writes it after all ranks finished).
* ``targets.safetensors``: ``targets``, the prompts' unit text embeddings (P, D); for the contrast its
  pairs' (P, 2, D), a and b, which ``explain_image(..., score="contrast")`` takes as they are.
* ``shards/shard-NNNNN.safetensors``: for image i, ``maps.i``, the raw (unnormalised) maps (K, h, w)
  float32, and ``scores.i``, the explained scores (K,) (the image-text cosines by default); K is every
  prompt (pair), or 1 with ``--classes`` (the image's own class).
* ``run.json``: images per second of the run.

A shard is written atomically when all its images are done; a run stopped midway (a rank killed, or
all) resumes from the shards already written when started again with the same settings. The files'
format is ``maps_store``'s, which writes and reads them; read the maps with :class:`DatasetMaps`::

    maps = DatasetMaps("maps/")
    stored = maps["n01440764/ILSVRC2012_val_00000293.JPEG"]
    stored.maps, stored.scores, stored.prompts, stored.heatmaps()
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from . import maps_store
from .config import ExplainConfig, check_choice
from .explain import check_score, method_default_score
from .inputs import DEFAULT_MAX_PATCHES, IMAGE_SUFFIXES, class_names
from .jobs.distributed import Context, init, items_per_rank, load_units, unit_size
from .maps_store import ALL, OWN, DatasetMaps, StoredMaps  # the reader, importable beside the job (README)
from .methods import get_image_method, get_spec, prepare_options
from .methods.registry import find_spec
from .methods.scores import DEFAULT_SCORE, MATCH_SCORES, check_count, is_classifier, score_name
from .prompts import caption_targets, class_index, class_targets, encode_texts, folder_classes, zero_shot_classifier
from .records import RunFolder, provenance
from .session import check_supported, run_image_method

__all__ = ["DatasetMaps", "StoredMaps", "explain_dataset", "find_images", "class_names", "run_command"]


# ------------------------------------------------------------------------------------ the images
def find_images(folder: str | Path) -> list[str]:
    """Keys (paths relative to ``folder``, with ``/``) of every image file under it, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    keys = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*")
                  if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not keys:
        raise FileNotFoundError(f"no images under {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return keys


def _labels(keys: Sequence[str]) -> tuple[list[str], list[int]]:
    """Class folders (the first path component) and each key's label."""
    loose = [key for key in keys if "/" not in key]
    if loose:
        raise ValueError(f"--classes needs every image inside a class folder; {len(loose)} lie directly in the "
                         f"folder (e.g. {loose[0]})")
    folders = sorted({key.split("/", 1)[0] for key in keys})
    index = {name: i for i, name in enumerate(folders)}
    return folders, [index[key.split("/", 1)[0]] for key in keys]


def _digest(values: Sequence[str]) -> str:
    h = hashlib.blake2b(digest_size=8)
    for value in values:
        h.update(value.encode("utf-8") + b"\0")
    return h.hexdigest()


def _input_sizes(model, folder: Path, keys: Sequence[str], resolution: str, max_patches: int,
                 show: bool) -> list[tuple[int, int, bool]]:
    """(height, width, downscaled) of each image as the model will see it, from the file headers (EXIF
    orientation applied), without decoding the pixels."""
    from tqdm import tqdm  # text progress (a widget bar does not survive a reload)

    from .inputs import header_orientation, native_size, pixel_limit, prepare_image

    if resolution == "model":
        size = tuple(prepare_image(model, Image.new("RGB", (32, 32)), "model").pixels.shape[-2:])
    unreadable, sizes = [], []
    for key in tqdm(keys, desc="reading image sizes", unit="image", disable=not show):
        try:
            with pixel_limit():  # the package's downscale warning, not PIL's decompression-bomb one
                image = Image.open(folder / key)
            with image:
                width, height = image.size
                # as load_image will turn it: a PNG's eXIf chunk after its pixels is found by seeks, not by
                # decoding. (A loaded image whose size differs from the plan's is an error, not a guess.)
                orientation = header_orientation(image, folder / key)
        except Exception as error:  # PIL raises many types for broken files
            unreadable.append(f"{key} ({type(error).__name__}: {error})")
            continue
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        if resolution == "model":
            sizes.append((size[0], size[1], False))
        else:
            w, h, capped = native_size(width, height, model.adapter.patch_size, max_patches)
            sizes.append((h, w, capped))
    if unreadable:
        raise ValueError(f"{len(unreadable)} unreadable images under {folder}: " + "; ".join(unreadable[:5]))
    return sizes


def _plan(sizes: Sequence[tuple[int, int, bool]], batch_size: int, shard_size: int) -> list[list[list[int]]]:
    """Shards as lists of batches (lists of image indices): images grouped by input size, in index order
    within a group, cut into batches of ``batch_size``; batches packed in order into shards of at most
    ``shard_size`` images."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (height, width, _) in enumerate(sizes):
        groups.setdefault((height, width), []).append(index)
    batches = [indices[i:i + batch_size] for _, indices in sorted(groups.items())
               for i in range(0, len(indices), batch_size)]
    shards: list[list[list[int]]] = []
    for batch in batches:
        if not shards or sum(map(len, shards[-1])) + len(batch) > shard_size:
            shards.append([])
        shards[-1].append(batch)
    return shards



# ------------------------------------------------------------------------------------- targets
#: what separates the two prompts of a contrast's pair on a line of a prompts file
PAIR_SEPARATOR = "|"


def _prompt_texts(prompts: Sequence[Any], score: str, adapter: Any = None) -> tuple[list[str], list[str]]:
    """The texts to embed (the target rows) and the names of the explained scores, from ``prompts``: its
    non-blank lines; for the contrast its pairs, each a line "a | b" or a pair (a, b), as the rows a_1, b_1,
    a_2, b_2, ... named "a rather than b" (as ``explain_image`` names them). A ValueError when none is left,
    a line is no pair, or the score cannot take their number (the probability among one prompt)."""
    if score != "contrast":
        names = [p.strip() for p in prompts if p.strip()]
        if not names:
            raise ValueError("no prompts (all blank)")
        check_count(score, len(names), adapter=adapter)
        return names, names
    pairs = []
    for prompt in prompts:
        if isinstance(prompt, str) and not prompt.strip():
            continue
        parts = prompt.split(PAIR_SEPARATOR) if isinstance(prompt, str) else list(prompt)
        parts = [str(part).strip() for part in parts]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"score='contrast' takes its prompts in pairs, a pair a line: two prompts separated by "
                             f"'{PAIR_SEPARATOR}', e.g. 'a red circle | a blue circle'; got {prompt!r}")
        pairs.append(parts)
    if not pairs:
        raise ValueError("no prompts (all blank)")
    return [text for pair in pairs for text in pair], [f"{a} rather than {b}" for a, b in pairs]


def _class_targets(model, names: Sequence[str], templates: str, show: bool) -> torch.Tensor:
    """(C, D) unit class embeddings: prompts.zero_shot_classifier with open_clip's ImageNet templates."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    chosen = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}[templates]
    return zero_shot_classifier(model, names, chosen, progress=show).cpu()


# ------------------------------------------------------------------------------------ the run
@dataclass
class _Loader:
    """Loads one batch of images as ``explain_image`` prepares them (runs in DataLoader workers)."""

    model: Any
    folder: Path
    images: list[dict[str, Any]]
    resolution: str
    max_patches: int

    def __call__(self, batch: list[int]) -> torch.Tensor:
        from .inputs import load_image, prepare_image

        pixels = []
        for index in batch:
            entry = self.images[index]
            with warnings.catch_warnings():  # downscaling is counted in the index, not warned per image
                warnings.filterwarnings("ignore", message=".*would give more than.*")
                prepared = prepare_image(self.model, load_image(self.folder / entry["key"]), self.resolution,
                                         max_patches=self.max_patches, source=entry["key"])
            if list(prepared.pixels.shape[-2:]) != entry["input_size"]:
                raise ValueError(f"{entry['key']}: decoded to {tuple(prepared.pixels.shape[-2:])} pixels, but its "
                                 f"header gave {tuple(entry['input_size'])} (the file changed since the run was planned?)")
            pixels.append(prepared.pixels)
        return torch.stack(pixels)


@dataclass
class _Job:
    """One dataset run as every rank holds it before rank 0 plans it: what is explained (the images'
    keys, the explained scores' names and the target rows' texts, each image's class with classes), how,
    and the settings it records."""

    model: Any
    folder: Path
    out: Path
    config: ExplainConfig
    keys: list[str]
    names: list[str]
    texts: list[str]  # the target rows' texts (for the contrast a_1, b_1, ...; the class names with classes)
    rows: list[int] | None  # an image classifier's targets: the class index of each (None: text targets)
    labels: list[int] | None
    templates: str | None  # the class templates; None: the names are prompts
    batch_size: int
    shard_size: int
    settings: dict[str, Any]
    run_folder: RunFolder

    @property
    def per_image(self) -> str:
        return self.settings["targets"]["per_image"]

    def prepare(self, world_size: int, overwrite: bool, show: bool) -> None:
        """Rank 0: resume the run in ``out`` (the same settings) or start one: plan it, embed the targets,
        write the index."""
        previous = self.run_folder.previous(overwrite)
        if previous is not None:
            self.run_folder.check(previous.get("settings", {}), self.settings)
            if (self.out / maps_store.TARGETS).exists():
                return
        if overwrite:
            self.run_folder.clear()
        sizes = _input_sizes(self.model, self.folder, self.keys, self.config.resolution, self.config.max_patches, show)
        index = self._index(sizes, world_size)
        if self.rows is not None:  # an image classifier's classes: one-hot rows over its classes
            targets = class_targets(self.model, self.rows)[0]
        elif self.templates is None and self.config.score in MATCH_SCORES:  # the captions' token ids
            targets = caption_targets(self.model, self.texts, score=self.config.score)[0]
        elif self.templates is None:
            targets = encode_texts(self.model, self.texts)
            if self.config.score == "contrast":  # stored as pairs, as explain_image takes them
                targets = targets.reshape(-1, 2, targets.shape[-1])
        else:
            targets = _class_targets(self.model, self.names, self.templates, show)
        maps_store.write_targets(self.out, targets)
        maps_store.write_index(self.out, index)
        capped = sum(size[2] for size in sizes)
        if capped and show:
            print(f"{capped} of {len(self.keys)} images exceed {self.config.max_patches} patches at native resolution "
                  "and are downscaled to fit (marked 'downscaled' in the index)", file=sys.stderr)

    def _index(self, sizes: Sequence[tuple[int, int, bool]], world_size: int) -> dict[str, Any]:
        """The run's plan: its images cut into batches and shards (finer where ``world_size`` asks for it)."""
        # fewer shards than ranks: shards (and batches, where larger) cut finer so that every rank works
        unit = unit_size(len(self.keys), self.shard_size, world_size)
        cut = {"batch_size": min(self.batch_size, unit), "shard_size": unit} if unit != self.shard_size else {}
        shards = _plan(sizes, min(self.batch_size, unit), unit)
        images = maps_store.image_entries(self.keys, self.labels, sizes, self.model.adapter.patch_size, shards)
        return maps_store.new_index(self.folder, self.settings, self.names, images, shards, cut)

    def explain(self, index: dict[str, Any], context: Context, *, workers: int,
                progress: bool) -> list[dict[str, float]]:
        """Explain this rank's shards that are not written yet, writing each when its images are done;
        every rank's phase (images ``computed``, wall and CPU ``seconds``), as ``RunFolder.write_run`` takes it."""
        targets = maps_store.read_targets(self.out).to(self.model.device)
        targets = targets.reshape(-1, targets.shape[-1])  # the contrast's pairs as rows a_1, b_1, a_2, ...
        # the method's model-dependent defaults from all the run's targets, as explain_image completes them
        # (CLIP Surgery's class set: every prompt or class, whichever of them a batch explains)
        config = self.config.with_options(prepare_options(self.config.method, self.model, targets, {}))
        images, shards = index["images"], [shard["batches"] for shard in index["shards"]]
        mine = [(j, shard) for j, shard in context.shard(shards) if not maps_store.shard_written(self.out, j)]
        todo = sum(len(batch) for _, shard in mine for batch in shard)
        loader = _Loader(self.model, self.folder, images, config.resolution, config.max_patches)
        started, cpu_started, computed = time.perf_counter(), time.process_time(), 0
        with context.progress(todo, desc=f"explain-dataset ({config.method})", unit="image",
                              disable=not progress) as bar:
            batches = load_units([batch for _, shard in mine for batch in shard], loader, workers=workers,
                                 device=self.model.device)
            for j, shard in mine:
                tensors: dict[str, torch.Tensor] = {}
                for batch in shard:
                    tensors.update(self._explain_batch(config, next(batches), targets, batch, images))
                    computed += len(batch)
                    bar.update(len(batch))
                maps_store.write_shard(self.out, j, tensors)
            return context.gather({"computed": computed, "seconds": time.perf_counter() - started,
                                   "cpu_seconds": time.process_time() - cpu_started})

    def _explain_batch(self, config: ExplainConfig, pixels: torch.Tensor, targets: torch.Tensor, batch: list[int],
                       images: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """One batch's entries of its shard: every target's maps and scores, or each image's own class's (the
        batch's classes mapped, the probability's softmax over every class: ``run_image_method``'s columns)."""
        columns = None
        if self.per_image == OWN:
            own = [images[i]["label"] for i in batch]
            distinct = columns = sorted(set(own))
        result = run_image_method(self.model, config, pixels, targets, inputs=[images[i]["key"] for i in batch],
                                  columns=columns)
        maps, scores = result.maps, result.scores
        del result
        if self.per_image == OWN:
            rows, column = torch.arange(len(batch)), torch.tensor([distinct.index(label) for label in own])
            maps, scores = maps[rows, column][:, None], scores[rows, column][:, None]
        return maps_store.shard_tensors(batch, maps, scores)

    def finish(self, index: dict[str, Any], context: Context, phases: list[dict[str, float]]) -> None:
        """Rank 0, after every rank has finished: the index says the run is complete; ``run.json``."""
        missing = maps_store.missing_shards(self.out, index)
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(index['shards'])} shard files are missing after every rank "
                               f"finished (e.g. {missing[0]}); is --out on a file system that every rank sees?")
        sizes = [sum(map(len, shard["batches"])) for shard in index["shards"]]
        record = context.record(items_per_rank(sizes, context.world_size), **index.get("cut", {}))
        maps_store.write_index(self.out, {**index, "complete": True, "distributed": record})
        self.run_folder.write_run(world_size=context.world_size, device=self.model.device, unit="images",
                                  count=len(index["images"]), phases=phases)


def _checked_config(model, prompts: Sequence[Any] | None, classes: str | None, templates: str, batch_size: int,
                    shard_size: int, **settings: Any) -> ExplainConfig:
    """The run's explanation settings, resolved for ``model``, once every argument is checked (a method the
    model's family cannot run, or a score it or the model cannot give, refused before any work)."""
    if (prompts is None) == (classes is None):
        raise ValueError("give either prompts or classes ('own' or 'all')")
    if classes is not None and classes not in (OWN, ALL):
        raise ValueError(f"classes must be 'own' or 'all', got {classes!r}")
    if settings.get("score") is None:  # left out: the model's own default, as explain_image resolves it
        settings["score"] = method_default_score(model.adapter, find_spec(settings["method"]))
    config = ExplainConfig(**settings)
    if config.score == "contrast" and classes is not None:
        raise ValueError("score='contrast' explains pairs of prompts (a rather than b), which classes do not give: "
                         "write the pairs into a prompts file, a pair a line, 'a red circle | a blue circle'")
    if config.score in MATCH_SCORES and classes is not None:
        raise ValueError(f"score={config.score!r} reads each caption's words with the image, which classes (a "
                         "template-averaged embedding each) do not give: write the captions into a prompts file")
    get_image_method(config.method)
    spec = get_spec(config.method)
    if "score" in spec.uses:  # the default score stands for the model's own (a classifier's logit)
        config = replace(config, score=score_name(model.adapter, config.score))
    check_score(model, config.score, spec)
    check_choice("templates", templates, ("openai", "simple"))
    if batch_size < 1 or shard_size < batch_size:
        raise ValueError(f"need batch_size >= 1 and shard_size >= batch_size; got {batch_size} and {shard_size}")
    check_supported(model, spec)
    return config.resolved(model.adapter, "image")


def _job(model, folder: Path, out: Path, config: ExplainConfig, prompts: Sequence[Any] | None, classes: str | None,
         templates: str, batch_size: int, shard_size: int) -> _Job:
    """The images under ``folder``, the targets' names and texts and the settings the run records (the score
    only away from the cosine: runs recorded before it was a setting resume)."""
    keys = find_images(folder)
    classifier = model.adapter.labels if is_classifier(model.adapter) else None
    rows = None
    if prompts is not None:
        texts, names = _prompt_texts(prompts, config.score if classifier is None else DEFAULT_SCORE, model.adapter)
        labels = None
        if classifier is not None:  # the lines name classes (label names or indices)
            rows = [class_index(classifier, name) for name in names]
    else:
        folders, labels = _labels(keys)
        if classifier is not None:  # each class folder is one of the classifier's classes
            rows = folder_classes(classifier, folders)
        else:
            texts = names = class_names(folders)
            check_count(config.score, len(names), "class", model.adapter)
    if rows is not None:
        texts = names = [classifier[row] for row in rows]
    templates_used = templates if classes is not None and rows is None else None  # a classifier's classes take none
    score = {"score": config.score} if config.score != DEFAULT_SCORE else {}
    settings = {"format": maps_store.FORMAT, **provenance(model, weights=True),
                "method": config.method, "layers": list(config.layers), "mode": config.mode, "qk": config.qk,
                **score, "resolution": config.resolution, "max_patches": config.max_patches,
                "batch_size": batch_size, "shard_size": shard_size,
                "targets": {"source": "prompts" if prompts is not None else "classes",
                            "per_image": ALL if classes in (None, ALL) else OWN,
                            "templates": templates_used,
                            "names": _digest(texts), **({"classes": rows} if rows is not None else {})},
                "files": {"count": len(keys), "digest": _digest(keys)}}
    run_folder = RunFolder(out, maps_store.INDEX, outputs=(maps_store.INDEX, maps_store.TARGETS, "run.json"),
                           folders=(maps_store.SHARDS,), what="maps made")
    return _Job(model, folder, out, config, keys, names, texts, rows, labels, templates_used, batch_size, shard_size,
                settings, run_folder)


def explain_dataset(model, folder: str | Path, out: str | Path, *, prompts: Sequence[Any] | None = None,
                    classes: str | None = None, templates: str = "openai", method: str = "grad_eclip",
                    layers: int | Sequence[int] = (-1,), mode: str = "faithful", qk: str = "raw",
                    score: str | None = None, resolution: str = "native", max_patches: int | None = None,
                    batch_size: int = 8, shard_size: int = 256, workers: int = 0, overwrite: bool = False,
                    progress: bool = True, context: Context | None = None, memory_budget: int | None = None) -> Path:
    """Explain every image under ``folder`` and write the maps into ``out`` (see the module docstring);
    returns the path of ``index.json``.

    Exactly one of ``prompts`` (strings: every image against every prompt) and ``classes`` ("own": each
    image against its class folder; "all": against every class). ``score``: what the maps explain, as
    ``explain_image``'s (None: the model's own default, for the method; the probability among all the prompts
    or all the classes, also for "own"; the contrast takes ``prompts`` as pairs, each a line "a | b" or a pair
    (a, b), and no classes). ``context``:
    this process's place in a run on several processes (every rank calls this with the same arguments). A
    folder that holds a run with the same settings is resumed; other settings are an error unless
    ``overwrite``. ``memory_budget``: bytes one batch's work may hold, as ``explain_image``'s (a batch is cut
    into chunks that fit it; the maps are those of the whole batch, and the budget is not recorded).
    """
    context = context or Context(device=model.device)
    folder, out = Path(folder), Path(out)
    config = _checked_config(model, prompts, classes, templates, batch_size, shard_size, method=method,
                             layers=layers, mode=mode, qk=qk, score=score, resolution=resolution,
                             max_patches=DEFAULT_MAX_PATCHES if max_patches is None else max_patches,
                             memory_budget=memory_budget)
    job = _job(model, folder, out, config, prompts, classes, templates, batch_size, shard_size)
    context.check_same("model weights", job.settings["weights"])
    context.on_main(lambda: job.prepare(context.world_size, overwrite, progress and context.is_main))
    index = maps_store.read_index(out)
    phases = job.explain(index, context, workers=workers, progress=progress)
    context.on_main(lambda: job.finish(index, context, phases))
    return job.run_folder.record


# -------------------------------------------------------------------------------- command line
def run_command(args: argparse.Namespace) -> Path:
    """``gradeclip explain-dataset`` on its parsed arguments (on every rank under torchrun); the options are
    declared in ``cli/commands.py``."""
    from .loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    context = init(args.device, timeout_minutes=args.dist_timeout)
    try:
        with context.guard(args.out):
            prompts = None
            if args.prompts is not None:
                prompts = Path(args.prompts).read_text(encoding="utf-8").splitlines()
            model = load_model(args.model, args.pretrained, device=context.device, precision=args.precision)
            if args.score is not None:  # given: one the model cannot give is refused (left out: the model's own)
                check_score(model, args.score)
            workers = args.workers if args.workers is not None else (4 if model.device.type == "cuda" else 0)
            index = explain_dataset(model, args.folder, args.out, prompts=prompts, classes=args.classes,
                                    templates=args.templates, method=args.method, layers=args.layers, mode=args.mode,
                                    qk=args.qk, score=args.score, resolution=args.resolution,
                                    max_patches=args.max_patches, batch_size=args.batch_size,
                                    shard_size=args.shard_size, workers=workers, overwrite=args.overwrite,
                                    context=context, memory_budget=args.memory_budget)
    finally:
        context.close()
    if context.is_main:
        run_info = json.loads((Path(args.out) / "run.json").read_text())
        print(f"wrote {index} ({run_info['images']} images; {run_info['computed']} explained in "
              f"{run_info['seconds']:.1f} s, {run_info['images_per_second']:.2f} images/s on "
              f"{context.world_size} process{'es' if context.world_size > 1 else ''})")
    return index


if __name__ == "__main__":  # the `gradeclip explain-dataset` alias (cli/commands.py declares its options)
    from torch.distributed.elastic.multiprocessing.errors import record

    from .cli import alias

    # under torchrun, a failing rank's traceback (of an error that is not a user's) goes into torchrun's report
    sys.exit(record(alias)("explain-dataset"))
