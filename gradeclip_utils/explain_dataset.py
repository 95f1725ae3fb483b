"""Grad-ECLIP maps of every image of a folder, written to sharded safetensors files, on one process or many.

    gradeclip explain-dataset FOLDER --prompts prompts.txt --out maps/   # every image x every prompt
    gradeclip explain-dataset VAL --classes --out maps/                   # ImageNet-style tree: each image x its class
    gradeclip explain-dataset VAL --classes all --out maps/               # each image x every class
    torchrun --nproc-per-node 8 -m gradeclip_utils.explain_dataset VAL --classes --out maps/

``FOLDER`` is searched recursively for images; an image's key is its path relative to ``FOLDER``.
``--prompts``: a text file with one prompt per line (blank lines skipped). ``--classes``: the first-level
folders are the classes (ImageNet's 1000 wnid folders get the standard class names, other folders their
own name with ``_`` as a space); a class's text embedding is the mean of its normalised template
embeddings (``--templates``: OpenAI's 80 or the simple ones), renormalised, as in the evaluation.

Images are explained at native resolution by default (aspect kept, sides rounded to the patch size, at
most ``--max-patches`` patches), exactly as ``explain_image`` explains one image: the same pixels, the
same method call (``--method``, default Grad-ECLIP, ``--layers``, ``--mode``, ``--qk``). Images are
grouped by patch grid and cut into batches of ``--batch-size``; the batches are packed in order into
shards of at most ``--shard-size`` images. Shards are the work units: shard j is computed on rank
j % N, so the files are the same whatever the number of processes.

The output folder:

* ``index.json``: the settings, the prompts, every image (key, label, shard, patch grid, input size,
  whether it was downscaled to ``--max-patches``), the shards and the ``distributed`` record;
  ``"complete": true`` once every shard is written (rank 0 writes it after all ranks finished).
* ``targets.safetensors``: ``targets``, the prompts' unit text embeddings (P, D).
* ``shards/shard-NNNNN.safetensors``: for image i, ``maps.i``, the raw (unnormalised) maps (K, h, w)
  float32, and ``scores.i``, the image-text cosines (K,); K is every prompt, or 1 with ``--classes``
  (the image's own class).
* ``run.json``: images per second of the run.

A shard is written atomically when all its images are done; a run stopped midway (a rank killed, or
all) resumes from the shards already written when started again with the same settings. Read the maps
with :class:`DatasetMaps`::

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from . import distributed
from .distributed import Context
from .config import ExplainConfig, check_choice
from .inputs import DEFAULT_MAX_PATCHES, IMAGE_SUFFIXES, class_names
from .maps import normalise_maps, resize_maps
from .prompts import encode_texts, zero_shot_classifier
from .records import RunFolder, provenance
from .methods import get_image_method, get_spec, prepare_options
from .session import check_supported, run_image_method

FORMAT = "gradeclip-maps/1"
SHARDS = "shards"
_OWN, _ALL = "own", "all"

__all__ = ["DatasetMaps", "StoredMaps", "explain_dataset", "find_images", "class_names", "main", "run_command"]


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

    from .inputs import header_orientation, native_size, prepare_image

    if resolution == "model":
        size = tuple(prepare_image(model, Image.new("RGB", (32, 32)), "model").pixels.shape[-2:])
    unreadable, sizes = [], []
    for key in tqdm(keys, desc="reading image sizes", unit="image", disable=not show):
        try:
            with Image.open(folder / key) as image:
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


def _shard_file(j: int) -> str:
    return f"{SHARDS}/shard-{j:05d}.safetensors"


# ------------------------------------------------------------------------------------- targets
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


def explain_dataset(model, folder: str | Path, out: str | Path, *, prompts: Sequence[str] | None = None,
                    classes: str | None = None, templates: str = "openai", method: str = "grad_eclip",
                    layers: int | Sequence[int] = (-1,), mode: str = "faithful", qk: str = "raw",
                    resolution: str = "native", max_patches: int | None = None, batch_size: int = 8,
                    shard_size: int = 256, workers: int = 0, overwrite: bool = False, progress: bool = True,
                    context: Context | None = None, memory_budget: int | None = None) -> Path:
    """Explain every image under ``folder`` and write the maps into ``out`` (see the module docstring);
    returns the path of ``index.json``.

    Exactly one of ``prompts`` (strings: every image against every prompt) and ``classes`` ("own": each
    image against its class folder; "all": against every class). ``context``: this process's place in
    a run on several processes (every rank calls this with the same arguments). A folder that holds a
    run with the same settings is resumed; other settings are an error unless ``overwrite``.
    """
    context = context or Context(device=model.device)
    folder, out = Path(folder), Path(out)
    if (prompts is None) == (classes is None):
        raise ValueError("give either prompts or classes ('own' or 'all')")
    if classes is not None and classes not in (_OWN, _ALL):
        raise ValueError(f"classes must be 'own' or 'all', got {classes!r}")
    config = ExplainConfig(method=method, layers=layers, mode=mode, qk=qk, resolution=resolution,
                           max_patches=DEFAULT_MAX_PATCHES if max_patches is None else max_patches,
                           memory_budget=memory_budget)
    check_choice("templates", templates, ("openai", "simple"))
    if batch_size < 1 or shard_size < batch_size:
        raise ValueError(f"need batch_size >= 1 and shard_size >= batch_size; got {batch_size} and {shard_size}")
    get_image_method(method)
    check_supported(model, get_spec(method))  # a method the model's family cannot run: refused before any work
    config = config.resolved(model.adapter, "image")
    keys = find_images(folder)
    if prompts is not None:
        names = [p.strip() for p in prompts if p.strip()]
        if not names:
            raise ValueError("no prompts (all blank)")
        labels = None
    else:
        folders, labels = _labels(keys)
        names = class_names(folders)
    settings = {"format": FORMAT, **provenance(model, weights=True),
                "method": config.method, "layers": list(config.layers), "mode": config.mode, "qk": config.qk,
                "resolution": config.resolution, "max_patches": config.max_patches, "batch_size": batch_size,
                "shard_size": shard_size,
                "targets": {"source": "prompts" if prompts is not None else "classes",
                            "per_image": _ALL if classes in (None, _ALL) else _OWN,
                            "templates": templates if classes is not None else None, "names": _digest(names)},
                "files": {"count": len(keys), "digest": _digest(keys)}}
    context.check_same("model weights", settings["weights"])
    run_folder = RunFolder(out, "index.json", outputs=("index.json", "targets.safetensors", "run.json"),
                           folders=(SHARDS,), what="maps made")
    index_path, targets_path = run_folder.record, out / "targets.safetensors"
    show = progress and context.is_main

    def prepare() -> None:  # rank 0: check or start the run, plan it, embed the prompts
        from safetensors.torch import save_file

        previous = run_folder.previous(overwrite)
        if previous is not None:
            run_folder.check(previous.get("settings", {}), settings)
            if targets_path.exists():
                return
        if overwrite:
            run_folder.clear()
        sizes = _input_sizes(model, folder, keys, config.resolution, config.max_patches, show)
        # fewer shards than ranks: shards (and batches, where larger) cut finer so that every rank works
        unit = distributed.unit_size(len(keys), shard_size, context.world_size)
        cut = {"batch_size": min(batch_size, unit), "shard_size": unit} if unit != shard_size else {}
        shards = _plan(sizes, min(batch_size, unit), unit)
        shard_of = {index: j for j, shard in enumerate(shards) for batch in shard for index in batch}
        patch = model.adapter.patch_size
        images = [{"key": key, "label": None if labels is None else labels[i], "shard": shard_of[i],
                   "grid": [sizes[i][0] // patch[0], sizes[i][1] // patch[1]], "input_size": [sizes[i][0], sizes[i][1]],
                   "downscaled": sizes[i][2]} for i, key in enumerate(keys)]
        index = {"format": FORMAT, "complete": False, "folder": str(folder.resolve()), "settings": settings,
                 "prompts": names, "images": images,
                 "shards": [{"file": _shard_file(j), "batches": shard} for j, shard in enumerate(shards)],
                 **({"cut": cut} if cut else {})}
        targets = (encode_texts(model, names) if prompts is not None
                   else _class_targets(model, names, templates, show)).float().cpu().contiguous()
        with distributed.atomic_output(targets_path) as tmp:
            save_file({"targets": targets}, str(tmp), metadata={"format": FORMAT})
        distributed.atomic_write_text(index_path, json.dumps(index) + "\n")
        capped = sum(size[2] for size in sizes)
        if capped and show:
            print(f"{capped} of {len(keys)} images exceed {config.max_patches} patches at native resolution and are "
                  "downscaled to fit (marked 'downscaled' in the index)", file=sys.stderr)

    context.on_main(prepare)
    index = json.loads(index_path.read_text())
    from safetensors.torch import load_file, save_file

    targets = load_file(str(targets_path))["targets"].to(model.device)
    # the method's model-dependent defaults from all the run's targets, as explain_image completes them
    # (CLIP Surgery's class set: every prompt or class, whichever of them a batch explains)
    config = config.with_options(prepare_options(method, model, targets, {}))
    images, shards = index["images"], [shard["batches"] for shard in index["shards"]]
    per_image = settings["targets"]["per_image"]
    mine = [(j, shard) for j, shard in context.shard(shards) if not (out / _shard_file(j)).exists()]
    todo = sum(len(batch) for _, shard in mine for batch in shard)
    loader = _Loader(model, folder, images, config.resolution, config.max_patches)
    started, cpu_started, computed = time.perf_counter(), time.process_time(), 0
    with context.progress(todo, desc=f"explain-dataset ({method})", unit="image", disable=not progress) as bar:
        batches = distributed.load_units([batch for _, shard in mine for batch in shard], loader, workers=workers,
                                         device=model.device)
        for j, shard in mine:
            tensors: dict[str, torch.Tensor] = {}
            for batch in shard:
                pixels = next(batches)
                if per_image == _OWN:
                    own = [images[i]["label"] for i in batch]
                    distinct = sorted(set(own))
                    chosen = targets[distinct]
                else:
                    chosen = targets
                result = run_image_method(model, config, pixels, chosen, inputs=[images[i]["key"] for i in batch])
                maps, scores = result.maps, result.scores
                del result
                if per_image == _OWN:
                    rows, column = torch.arange(len(batch)), torch.tensor([distinct.index(label) for label in own])
                    maps, scores = maps[rows, column][:, None], scores[rows, column][:, None]
                for row, i in enumerate(batch):
                    tensors[f"maps.{i}"] = maps[row].clone(memory_format=torch.contiguous_format)
                    tensors[f"scores.{i}"] = scores[row].clone(memory_format=torch.contiguous_format)
                computed += len(batch)
                bar.update(len(batch))
            with distributed.atomic_output(out / _shard_file(j)) as tmp:
                save_file(tensors, str(tmp), metadata={"format": FORMAT})  # one key: the same bytes every run
        phase = context.gather({"computed": computed, "seconds": time.perf_counter() - started,
                                "cpu_seconds": time.process_time() - cpu_started})

    def finish() -> None:  # rank 0, after every rank has finished: the index says the run is complete
        missing = [shard["file"] for shard in index["shards"] if not (out / shard["file"]).exists()]
        if missing:
            raise RuntimeError(f"{len(missing)} of {len(index['shards'])} shard files are missing after every rank "
                               f"finished (e.g. {missing[0]}); is --out on a file system that every rank sees?")
        record = context.record(distributed.items_per_rank([sum(map(len, s)) for s in shards], context.world_size),
                                **index.get("cut", {}))
        distributed.atomic_write_text(index_path, json.dumps({**index, "complete": True, "distributed": record}) + "\n")
        run_folder.write_run(world_size=context.world_size, device=model.device, unit="images", count=len(images),
                             phases=phase)

    context.on_main(finish)
    return index_path


# ------------------------------------------------------------------------------------ reading
@dataclass
class StoredMaps:
    """The stored maps of one image: raw maps (K, h, w), scores (K,), the K prompts' names."""

    key: str
    index: int
    maps: torch.Tensor
    scores: torch.Tensor
    prompts: list[str]
    label: int | None
    input_size: tuple[int, int]

    def heatmaps(self, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Maps upsampled bilinearly to ``size`` (default: the model's input size of the image) and
        min-max normalised to [0, 1]: (K, H, W)."""
        return normalise_maps(resize_maps(self.maps, tuple(size or self.input_size)))


class DatasetMaps:
    """Read the maps an ``explain-dataset`` run wrote, by image key (or index)."""

    def __init__(self, folder: str | Path, *, allow_incomplete: bool = False) -> None:
        self.folder = Path(folder)
        path = self.folder / "index.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not an explain-dataset output folder")
        self.index = json.loads(path.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown format {self.index.get('format')!r} (expected {FORMAT})")
        if not self.index["complete"] and not allow_incomplete:
            raise ValueError(f"{self.folder} holds an incomplete run (resume it with the same command, or pass "
                             "allow_incomplete=True to read the shards written so far)")
        self.prompts: list[str] = self.index["prompts"]
        self.settings: dict[str, Any] = self.index["settings"]
        self.images: list[dict[str, Any]] = self.index["images"]
        self._position = {entry["key"]: i for i, entry in enumerate(self.images)}

    @property
    def keys(self) -> list[str]:
        return [entry["key"] for entry in self.images]

    def __len__(self) -> int:
        return len(self.images)

    def __contains__(self, key: object) -> bool:
        return key in self._position

    def targets(self) -> torch.Tensor:
        """The prompts' unit text embeddings (P, D)."""
        from safetensors.torch import load_file

        return load_file(str(self.folder / "targets.safetensors"))["targets"]

    def _entry(self, key: str | int) -> int:
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise TypeError(f"index maps by image key (str) or position (int), got {type(key).__name__}")
        if isinstance(key, int):
            if not -len(self) <= key < len(self):
                raise IndexError(f"image {key} out of range for {len(self)} images")
            return key % len(self)
        if key not in self._position:
            raise KeyError(f"no image {key!r} in {self.folder}")
        return self._position[key]

    def _stored(self, handle, i: int) -> StoredMaps:
        entry = self.images[i]
        label = entry["label"]
        own = self.settings["targets"]["per_image"] == _OWN
        return StoredMaps(key=entry["key"], index=i, maps=handle.get_tensor(f"maps.{i}"),
                          scores=handle.get_tensor(f"scores.{i}"), prompts=[self.prompts[label]] if own else
                          list(self.prompts), label=label, input_size=tuple(entry["input_size"]))

    def _open(self, shard: int):
        from safetensors import safe_open

        path = self.folder / self.index["shards"][shard]["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the run is incomplete (resume it)")
        return safe_open(str(path), framework="pt")

    def __getitem__(self, key: str | int) -> StoredMaps:
        i = self._entry(key)
        with self._open(self.images[i]["shard"]) as handle:
            return self._stored(handle, i)

    def __iter__(self) -> Iterator[StoredMaps]:
        """Every image, shard by shard (each shard file opened once), in image order within a shard."""
        by_shard: dict[int, list[int]] = {}
        for i, entry in enumerate(self.images):
            by_shard.setdefault(entry["shard"], []).append(i)
        for shard, indices in sorted(by_shard.items()):
            with self._open(shard) as handle:
                for i in indices:
                    yield self._stored(handle, i)


# -------------------------------------------------------------------------------- command line
def run_command(args: argparse.Namespace) -> Path:
    """``gradeclip explain-dataset`` on its parsed arguments (on every rank under torchrun); the options are
    declared in ``cli.py``."""
    from .loading import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    context = distributed.init(args.device, timeout_minutes=args.dist_timeout)
    try:
        with context.guard(args.out):
            prompts = None
            if args.prompts is not None:
                prompts = Path(args.prompts).read_text(encoding="utf-8").splitlines()
            model = load_model(args.model, args.pretrained, device=context.device, precision=args.precision)
            workers = args.workers if args.workers is not None else (4 if model.device.type == "cuda" else 0)
            index = explain_dataset(model, args.folder, args.out, prompts=prompts, classes=args.classes,
                                    templates=args.templates, method=args.method, layers=args.layers, mode=args.mode,
                                    qk=args.qk, resolution=args.resolution, max_patches=args.max_patches,
                                    batch_size=args.batch_size, shard_size=args.shard_size, workers=workers,
                                    overwrite=args.overwrite, context=context, memory_budget=args.memory_budget)
    finally:
        context.close()
    if context.is_main:
        run_info = json.loads((Path(args.out) / "run.json").read_text())
        print(f"wrote {index} ({run_info['images']} images; {run_info['computed']} explained in "
              f"{run_info['seconds']:.1f} s, {run_info['images_per_second']:.2f} images/s on "
              f"{context.world_size} process{'es' if context.world_size > 1 else ''})")
    return index


if __name__ == "__main__":  # the `gradeclip explain-dataset` alias (cli.py declares its options)
    from torch.distributed.elastic.multiprocessing.errors import record

    from .cli import alias

    # under torchrun, a failing rank's traceback (of an error that is not a user's) goes into torchrun's report
    sys.exit(record(alias)("explain-dataset"))
