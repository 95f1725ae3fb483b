"""Figure export with manifests: every figure as PNG and PDF plus a JSON file that says how it was made.

A manifest records what is needed to make the figure again: the model and its weights, the method and
its settings, the prompts, the images (path or synthetic scene seed, with a content hash), the
notebook and its parameters, and the versions of the package and its main dependencies. It also says
what the figure's values are (``target_fields``): the model's kind ("clip" or "classifier"), the explained
score, and for a classifier the classes its prompts name (index and label)::

    exporter = FigureExporter("outputs/figures/quick_start", notebook="01_quick_start", model=model,
                              parameters={"MODEL": "synthetic"})
    exporter.save(fig, "heatmaps", explanation=ex, images=["data/samples/three_shapes.png"])

``FigureExporter.show`` saves, displays the figure once in a notebook and closes it, so that a
notebook shows exactly the figures it exported.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib import pyplot as plt
from matplotlib.figure import Figure
from PIL import Image

from .plotting import save_figure
from .records import provenance
from .resources import REPO_ROOT

MANIFEST_VERSION = 1
DEFAULT_FORMATS = ("png", "pdf")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _jsonable(value: Any) -> Any:
    """Settings and parameters as plain JSON values (tensors and arrays become lists, paths strings)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not np.isfinite(value):
            return str(value)
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if hasattr(value, "tolist") and hasattr(value, "detach"):  # torch tensors
        return _jsonable(value.detach().cpu().tolist())
    return repr(value)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_picture(picture: Image.Image) -> str:
    return hashlib.sha256(np.asarray(picture.convert("RGB")).tobytes()).hexdigest()


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path.resolve())


def scene_recipe(scene: Any) -> str | None:
    """A call that makes exactly this synthetic scene again (checked pixel for pixel), or None.

    Tried: ``generate_scene(seed)``, with ``n_objects``, with the objects' shapes and colours (and
    sizes), and the training and evaluation examples ``make_example(seed, kind=...)``.
    """
    from .synthetic import generate_scene
    from .synthetic.dataset import TRAIN_MIX, make_example

    seed, target = scene.seed, np.asarray(scene.image)
    plain = [{"shape": o.shape, "colour": o.colour} for o in scene.objects]
    sized = [{"shape": o.shape, "colour": o.colour, "size": o.size} for o in scene.objects]
    candidates = [(f"generate_scene({seed}, n_objects={scene.n_objects})",
                   lambda: generate_scene(seed, n_objects=scene.n_objects, with_captions=False)),
                  (f"generate_scene({seed})", lambda: generate_scene(seed, with_captions=False)),
                  (f"generate_scene({seed}, objects={plain!r})", lambda: generate_scene(seed, objects=plain,
                                                                                        with_captions=False)),
                  (f"generate_scene({seed}, objects={sized!r})", lambda: generate_scene(seed, objects=sized,
                                                                                        with_captions=False))]
    candidates += [(f"make_example({seed}, kind={kind!r}).scene", lambda kind=kind: make_example(seed, kind=kind).scene)
                   for kind in TRAIN_MIX]
    for recipe, make in candidates:
        try:
            candidate = make()
        except (ValueError, RuntimeError):
            continue
        if candidate.image.size == scene.image.size and np.array_equal(np.asarray(candidate.image), target):
            return recipe
    return None


def describe_image(image: Any, name: str | None = None) -> dict[str, Any]:
    """What a manifest says about one input image.

    A file path gives its path (relative to the repository when inside it) and the file's SHA-256; a
    synthetic ``Scene`` its seed, objects and the call that makes it again (``scene_recipe``); a PIL
    image its size and the SHA-256 of its RGB pixels; anything else its type.
    """
    from .synthetic import Scene

    if isinstance(image, dict) and "kind" in image:
        return dict(image)
    if isinstance(image, (str, Path)):
        path = Path(image)
        entry: dict[str, Any] = {"kind": "file", "path": _relative(path) if path.exists() else str(image)}
        if path.is_file():
            entry["sha256"] = _sha256_file(path)
            with Image.open(path) as picture:
                entry["size"] = list(picture.size)
    elif isinstance(image, Scene):
        entry = {"kind": "synthetic_scene", "seed": image.seed, "size": list(image.image.size),
                 "objects": [{k: o[k] for k in ("shape", "colour", "size")} for o in image.attributes()],
                 "recipe": scene_recipe(image), "sha256": _sha256_picture(image.image)}
    elif isinstance(image, Image.Image):
        entry = {"kind": "picture", "size": list(image.size), "sha256": _sha256_picture(image)}
    else:
        entry = {"kind": type(image).__name__}
    if name is not None:
        entry["name"] = name
    return entry


def target_fields(model: Any, prompts: Sequence[Any] | None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a manifest says of a figure's targets and values, for ``model`` (a LoadedModel, or None):
    ``model_kind`` ("classifier" for an image classifier, else "clip"), ``score`` (the score the values are:
    ``settings["score"]``, the model's default where the method does not use it, ``methods.scores.score_name``)
    and ``classes`` (a classifier's: ``{"index", "label"}`` of each of ``prompts``, named or indexed; None
    when they are not its classes, or for a CLIP)."""
    from .methods.scores import DEFAULT_SCORE, default_score, is_classifier, score_name
    from .prompts import class_entries

    adapter = getattr(model, "adapter", None)
    if adapter is None:
        return {"model_kind": None, "score": (settings or {}).get("score"), "classes": None}
    settings = settings or {}
    score = score_name(adapter, settings.get("score") or DEFAULT_SCORE)
    if settings.get("uses_score") is False:  # the method explains no score: its values are the model's default
        score = default_score(adapter)  # (SigLIP's logit, which the cosine recorded with it does not name)
    classes = None
    if is_classifier(adapter):
        try:
            classes = class_entries(adapter.labels, list(prompts or []))
        except (TypeError, ValueError):  # prompts renamed by the caller (``labels=``): not class names
            classes = None
    return {"model_kind": "classifier" if is_classifier(adapter) else "clip", "score": score,
            "classes": classes}


class FigureExporter:
    """Saves figures as PNG and PDF with a JSON manifest each, into one output folder.

    ``model`` (a LoadedModel) fills the model fields of every manifest; ``notebook`` and ``parameters``
    (the notebook's parameter cell) say how to run the figure's notebook again. ``manifests`` lists
    what was written, in order.
    """

    def __init__(self, out_dir: str | Path, *, notebook: str | None = None, model: Any = None,
                 parameters: dict[str, Any] | None = None, formats: Sequence[str] = DEFAULT_FORMATS,
                 dpi: int = 150) -> None:
        self.out_dir = Path(out_dir)
        self.notebook = notebook
        self.model = model
        self.parameters = dict(parameters or {})
        self.formats = tuple(formats)
        self.dpi = dpi
        self.manifests: list[dict[str, Any]] = []
        self._software = provenance(software=True)  # the same for every figure (git is asked once)
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _model_fields(self, settings: dict[str, Any]) -> dict[str, Any]:
        described = provenance(self.model)["model"] if hasattr(self.model, "describe") else {}
        fields = {}
        for key in ("model", "pretrained", "precision", "device"):
            fields[key] = settings.get(key, described.get(key))
        return fields

    def save(self, fig: Figure, name: str, *, explanation: Any = None, images: Iterable[Any] | None = None,
             image_names: Sequence[str] | None = None, prompts: Sequence[str] | None = None,
             method: str | None = None, settings: dict[str, Any] | None = None, title: str | None = None,
             description: str | None = None, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write ``name.png``, ``name.pdf`` and ``name.json``; returns the manifest.

        ``explanation`` (an ImageExplanation or TextExplanation) supplies method, settings and prompts
        (explicit arguments win); ``images`` are the inputs as paths, synthetic scenes or pictures
        (default: the explanation's pictures); ``data`` holds any other numbers the figure shows.
        """
        if not isinstance(fig, Figure):
            raise TypeError(f"expected a matplotlib Figure, got {type(fig).__name__}")
        if not _NAME_RE.match(name):
            raise ValueError(f"figure name {name!r}: use letters, digits, '_', '-' and '.', no folders")
        merged: dict[str, Any] = {}
        if explanation is not None:
            merged.update(getattr(explanation, "settings", {}) or {})
        merged.update(settings or {})
        if prompts is None and explanation is not None:
            prompts = getattr(explanation, "prompts", None) or getattr(explanation, "texts", None)
        if images is None and explanation is not None:
            images = list(getattr(explanation, "images", []) or [])
        image_list = list(images) if images is not None else []
        if image_names is not None and len(image_names) != len(image_list):
            raise ValueError(f"{len(image_names)} image names for {len(image_list)} images")
        described = [describe_image(image, None if image_names is None else image_names[i])
                     for i, image in enumerate(image_list)]
        files = save_figure(fig, self.out_dir / name, formats=self.formats, dpi=self.dpi)
        width, height = fig.get_size_inches()
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "figure": name,
            "title": title or fig.get_suptitle() or None,
            "description": description,
            "files": {path.suffix.lstrip("."): path.name for path in files},
            "size_inches": [round(float(width), 3), round(float(height), 3)],
            "dpi": self.dpi,
            "notebook": self.notebook,
            "parameters": _jsonable(self.parameters),
            **self._model_fields(merged),
            "method": method or merged.get("method"),
            "settings": _jsonable({k: v for k, v in merged.items()
                                   if k not in ("model", "pretrained", "precision", "device")}),
            "prompts": _jsonable(list(prompts)) if prompts is not None else [],
            **target_fields(self.model, prompts, merged),
            "images": described,
            "data": _jsonable(data or {}),
            "package": dict(self._software["package"]),
            "versions": dict(self._software["versions"]),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        path = self.out_dir / f"{name}.json"
        path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        self.manifests.append(manifest)
        return manifest

    def show(self, fig: Figure, name: str, **manifest: Any) -> dict[str, Any]:
        """``save``, then display the figure once (in a notebook) and close it."""
        result = self.save(fig, name, **manifest)
        try:
            from IPython import get_ipython
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython ships with the notebook extras
            get_ipython = None
        if get_ipython is not None and get_ipython() is not None:
            display(fig)
        plt.close(fig)
        return result

    def summary(self):
        """One row per exported figure: name, method, prompts, files (a pandas DataFrame)."""
        import pandas as pd

        return pd.DataFrame([{"figure": m["figure"], "method": m["method"], "model": m["model"],
                              "prompts": len(m["prompts"]), "images": len(m["images"]),
                              "files": ", ".join(m["files"].values())} for m in self.manifests])


def load_manifests(folder: str | Path) -> list[dict[str, Any]]:
    """Every manifest under ``folder`` (recursively), sorted by path."""
    manifests = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(content, dict) and "manifest_version" in content and "figure" in content:
            content["_path"] = str(path)
            manifests.append(content)
    return manifests
