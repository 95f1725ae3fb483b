"""The maps files of a dataset run (``gradeclip explain-dataset``): written and read back here, and only here.

An output folder holds (the format ``FORMAT``):

* ``index.json`` (``INDEX``): ``format``; ``complete`` (true once every shard is written); ``folder``, the
  image folder; ``settings``; ``prompts``, the targets' names; ``images``, one entry per image in key
  order (``key``, ``label``, ``shard``, ``grid``, ``input_size``, ``downscaled``); ``shards``, each with its
  ``file`` and its ``batches`` of image indices; ``cut`` where the run cut its units finer than asked,
  and ``distributed`` once complete. ``settings["targets"]["per_image"]`` says which targets an image's
  maps are for: ``ALL`` (every target) or ``OWN`` (its own class, ``label``); ``settings["score"]`` what
  they explain (``methods/scores.py``), present only away from the cosine (``DatasetMaps.score``).
* ``targets.safetensors`` (``TARGETS``): ``targets``, the unit text embeddings (P, D); for the contrast
  (P, 2, D), each pair's a and b.
* ``shards/shard-NNNNN.safetensors`` (``shard_file``): for image i, ``maps.i``, the raw maps (K, h, w)
  float32, and ``scores.i``, the explained scores (K,) (the image-text cosines by default).

Every file is written atomically (``jobs.files.atomic_output``); a shard is written once, whole.
:class:`DatasetMaps` reads a folder as a mapping from image key to :class:`StoredMaps`.
"""

from __future__ import annotations

import json
from collections.abc import ItemsView, Mapping, ValuesView
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .jobs.files import atomic_output, atomic_write_text
from .maps import normalise_maps, resize_maps

__all__ = ["ALL", "FORMAT", "INDEX", "OWN", "SHARDS", "TARGETS", "DatasetMaps", "StoredMaps", "image_entries",
           "missing_shards", "new_index", "read_index", "read_targets", "shard_file", "shard_tensors",
           "shard_written", "write_index", "write_shard", "write_targets"]

FORMAT = "gradeclip-maps/1"
INDEX = "index.json"
TARGETS = "targets.safetensors"
SHARDS = "shards"
OWN, ALL = "own", "all"


# ------------------------------------------------------------------------------------ writing
def shard_file(j: int) -> str:
    """The path of shard ``j`` in an output folder."""
    return f"{SHARDS}/shard-{j:05d}.safetensors"


def image_entries(keys: Sequence[str], labels: Sequence[int] | None, sizes: Sequence[tuple[int, int, bool]],
                  patch: tuple[int, int], shards: Sequence[Sequence[Sequence[int]]]) -> list[dict[str, Any]]:
    """The index's entry of each image: its key, label (None without classes), shard, patch grid, input
    size ``sizes[i][:2]`` and whether it was downscaled (``sizes[i][2]``)."""
    shard_of = {index: j for j, shard in enumerate(shards) for batch in shard for index in batch}
    return [{"key": key, "label": None if labels is None else labels[i], "shard": shard_of[i],
             "grid": [sizes[i][0] // patch[0], sizes[i][1] // patch[1]], "input_size": [sizes[i][0], sizes[i][1]],
             "downscaled": sizes[i][2]} for i, key in enumerate(keys)]


def new_index(folder: Path, settings: dict[str, Any], prompts: Sequence[str], images: list[dict[str, Any]],
              shards: Sequence[Sequence[Sequence[int]]], cut: dict[str, int]) -> dict[str, Any]:
    """The index of a run not yet complete (``folder``: the images' folder)."""
    return {"format": FORMAT, "complete": False, "folder": str(folder.resolve()), "settings": settings,
            "prompts": list(prompts), "images": images,
            "shards": [{"file": shard_file(j), "batches": shard} for j, shard in enumerate(shards)],
            **({"cut": cut} if cut else {})}


def write_index(out: Path, index: dict[str, Any]) -> None:
    atomic_write_text(out / INDEX, json.dumps(index) + "\n")


def read_index(folder: Path) -> dict[str, Any]:
    return json.loads((folder / INDEX).read_text())


def write_targets(out: Path, targets: torch.Tensor) -> None:
    """The targets' embeddings (P, D), as float32; a match score's captions (``methods.scores.MATCH_SCORES``) as
    their (P, L) token ids, kept integers."""
    from safetensors.torch import save_file

    kept = targets.float() if targets.is_floating_point() else targets.long()
    with atomic_output(out / TARGETS) as tmp:
        save_file({"targets": kept.cpu().contiguous()}, str(tmp), metadata={"format": FORMAT})


def read_targets(folder: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(folder / TARGETS))["targets"]


def shard_tensors(batch: Sequence[int], maps: torch.Tensor, scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch's entries of its shard: image ``batch[row]``'s maps ``maps[row]`` and scores ``scores[row]``."""
    tensors = {}
    for row, i in enumerate(batch):
        tensors[f"maps.{i}"] = maps[row].clone(memory_format=torch.contiguous_format)
        tensors[f"scores.{i}"] = scores[row].clone(memory_format=torch.contiguous_format)
    return tensors


def write_shard(out: Path, j: int, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_output(out / shard_file(j)) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})  # one key: the same bytes every run


def shard_written(out: Path, j: int) -> bool:
    return (out / shard_file(j)).exists()


def missing_shards(out: Path, index: dict[str, Any]) -> list[str]:
    """The files of the index's shards that are not in ``out``."""
    return [shard["file"] for shard in index["shards"] if not (out / shard["file"]).exists()]


# ------------------------------------------------------------------------------------ reading
@dataclass
class StoredMaps:
    """The stored maps of one image: raw maps (K, h, w), explained scores (K,), the K prompts' names."""

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


class _Values(ValuesView):
    def __iter__(self) -> Iterator[StoredMaps]:
        return self._mapping._read()


class _Items(ItemsView):
    def __iter__(self) -> Iterator[tuple[str, StoredMaps]]:
        return ((stored.key, stored) for stored in self._mapping._read())


class DatasetMaps(Mapping[str, StoredMaps]):
    """Read the maps an ``explain-dataset`` run wrote: a mapping from image key to :class:`StoredMaps`.

    ``maps[key]`` (or ``maps[i]``, the i-th image of ``images``, in key order) reads one image's maps;
    ``len``, ``in``, ``get``, ``keys``, ``values`` and ``items`` are a mapping's. Iterating (the mapping
    itself, its keys, values or items) goes shard by shard, in image order within a shard, so that
    ``values()`` and ``items()`` open each shard file once.
    """

    def __init__(self, folder: str | Path, *, allow_incomplete: bool = False) -> None:
        self.folder = Path(folder)
        path = self.folder / INDEX
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not an explain-dataset output folder")
        self.index = read_index(self.folder)
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown format {self.index.get('format')!r} (expected {FORMAT})")
        if not self.index["complete"] and not allow_incomplete:
            raise ValueError(f"{self.folder} holds an incomplete run (resume it with the same command, or pass "
                             "allow_incomplete=True to read the shards written so far)")
        self.prompts: list[str] = self.index["prompts"]
        self.settings: dict[str, Any] = self.index["settings"]
        #: what the maps explain: the run's score, the cosine in runs that record none
        self.score: str = self.settings.get("score", "cosine")
        self.images: list[dict[str, Any]] = self.index["images"]
        self._position = {entry["key"]: i for i, entry in enumerate(self.images)}
        self._by_shard: dict[int, list[int]] = {}
        for i, entry in enumerate(self.images):
            self._by_shard.setdefault(entry["shard"], []).append(i)

    # a reader is equal to itself only (a mapping's equality would read every map) and stays hashable
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __len__(self) -> int:
        return len(self.images)

    def __contains__(self, key: object) -> bool:
        return key in self._position

    def __iter__(self) -> Iterator[str]:
        """Every image's key, shard by shard (the order of ``values()`` and ``items()``)."""
        for _, indices in sorted(self._by_shard.items()):
            for i in indices:
                yield self.images[i]["key"]

    def values(self) -> ValuesView:
        return _Values(self)

    def items(self) -> ItemsView:
        return _Items(self)

    def targets(self) -> torch.Tensor:
        """The prompts' unit text embeddings (P, D); for the contrast the pairs' (P, 2, D). ``explain_image(...,
        score=maps.score)`` takes them as they are."""
        return read_targets(self.folder)

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
        own = self.settings["targets"]["per_image"] == OWN
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

    def _read(self) -> Iterator[StoredMaps]:
        """Every image's maps in the order of ``__iter__``, each shard file opened once."""
        for shard, indices in sorted(self._by_shard.items()):
            with self._open(shard) as handle:
                for i in indices:
                    yield self._stored(handle, i)
