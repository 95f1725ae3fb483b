"""Loading CLIP models of every supported family: open_clip names and weights, local checkpoints, the
embedded synthetic model, Hugging Face transformers checkpoints (``hf:``) and OpenAI clip state dicts
(``openai-clip:``); ViT image classifiers (Hugging Face ``hf:`` checkpoints whose config names an image
classifier, timm models ``timm:``, torchvision models ``torchvision:``); and wrapping models users built
themselves."""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import hub
from .adapters import CLASSIFIER_FAMILIES, FAMILIES, CLIPAdapter, get_adapter
from .adapters.hf_clip import HFCLIPPair
from .checkpoints import CLIP_MEAN, CLIP_STD, check_checkpoint
from .errors import GradEclipError, WeightsUnavailableError
from .resources import SYNTHETIC_CLASSIFIER_DIR, SYNTHETIC_DIR
from .synthetic import classifier as synthetic_classifier
from .synthetic.embedded import SyntheticWorld
from .text import checked_tokenizer, tokenize

SYNTHETIC = "synthetic"
#: the embedded synthetic classifier (a timm ViT, colour x shape as 35 classes; data/synthetic_classifier)
SYNTHETIC_CLASSIFIER = "synthetic-classifier"
HF_PREFIX = "hf:"
OPENAI_CLIP_PREFIX = "openai-clip:"
#: the size of CLIP's byte-pair vocabulary (open_clip's bundled tokenizer)
CLIP_VOCAB_SIZE = 49408
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")


class UnknownModelError(GradEclipError, RuntimeError):
    """A model name that is no open_clip model, model folder or prefixed name (a RuntimeError, as open_clip's
    own error for an unknown name was)."""


@dataclass
class LoadedModel:
    """A CLIP model ready to explain: the model (eval mode) and what it needs around it."""

    model: nn.Module
    preprocess: Callable
    tokenizer: Callable
    device: torch.device
    name: str
    pretrained: str | None
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)
    #: the inputs the model knows, where it knows only some (the embedded synthetic model: its world,
    #: ``synthetic.embedded.SyntheticWorld``): pictures and prompts from outside are warned about; None: any
    known_inputs: Any = None

    @cached_property
    def adapter(self) -> CLIPAdapter:
        return get_adapter(self.model)

    @cached_property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) of the preprocessing's Normalize step."""
        for step in getattr(self.preprocess, "transforms", [self.preprocess]):
            if type(step).__name__ == "Normalize":
                return tuple(float(v) for v in step.mean), tuple(float(v) for v in step.std)
        visual = getattr(self.model, "visual", None)
        mean = getattr(visual, "image_mean", None) or CLIP_MEAN
        std = getattr(visual, "image_std", None) or CLIP_STD
        return tuple(mean), tuple(std)

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", None) or self.adapter.context_length)

    def tokenize(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids (K, L); warns when a text is cut to the context length, or holds words outside
        ``known_inputs``."""
        if self.known_inputs is not None:
            self.known_inputs.check_texts(texts)
        return tokenize(self, texts)

    def describe(self) -> dict[str, Any]:
        """Name, family, weights, precision and device, for manifests and result settings; for an image
        classifier also its ``kind`` and its number of ``classes``."""
        described = {"model": self.name, "family": self.family, "pretrained": self.pretrained,
                     "precision": self.precision, "device": str(self.device)}
        if getattr(self.adapter, "is_classifier", False):
            described.update(kind="image classifier", classes=self.adapter.num_classes)
        return described

    def check_picture(self, picture: Any, source: str) -> None:
        """Called with every picture a user gives (an 8-bit RGB PIL image, as read; ``source`` names it) before it
        is preprocessed, as ``tokenize`` is with every prompt: a model with ``known_inputs`` (the embedded synthetic
        one) warns there about what lies outside them."""
        if self.known_inputs is not None:
            self.known_inputs.check_picture(picture, source)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_name(name: str) -> str:
    if name == SYNTHETIC:
        config = SYNTHETIC_DIR / "open_clip_config.json"
        if not config.is_file():
            raise FileNotFoundError(
                f"The embedded synthetic model is missing: {config} does not exist. It ships with the "
                "repository under data/synthetic_clip; train it again with "
                "`python -m gradeclip_utils.synthetic.train --out runs/synthetic_clip --export data/synthetic_clip` (see data/synthetic_clip/MODEL_CARD.md), or set GRADECLIP_DATA.")
        return f"local-dir:{SYNTHETIC_DIR}"
    path = Path(name)
    if path.is_dir() and (path / "open_clip_config.json").is_file():
        return f"local-dir:{path.resolve()}"
    return name


def _looks_like_file(pretrained: str) -> bool:
    return any(sep in pretrained for sep in ("/", "\\")) or Path(pretrained).suffix in {
        ".safetensors", ".bin", ".pt", ".pth", ".ckpt"}


def _folder_checkpoints(folder: Path) -> list[Path]:
    """The checkpoint open_clip would pick in a model folder (all candidates when that is unknown)."""
    try:
        from open_clip.factory import _find_checkpoint_in_dir

        chosen = _find_checkpoint_in_dir(folder)
        return [Path(chosen)] if chosen else []
    except ImportError:
        return sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pth"))


def load_model(name: str = SYNTHETIC, pretrained: str | None = None, device: str | torch.device | None = None,
               precision: str = "fp32", *, cache_dir: str | None = None) -> LoadedModel:
    """Load a CLIP model of any supported family, ready for explanation.

    ``name``:

    - an open_clip model name ("ViT-B-16", "RN50"), a folder with ``open_clip_config.json`` and weights
      (or "local-dir:PATH"), or "synthetic" (the default), the small CLIP trained on this project's
      synthetic scenes, shipped under ``data/synthetic_clip``; or "synthetic-classifier", the small ViT
      classifier of the same scenes (colour x shape as 35 classes, ``data/synthetic_classifier``; a folder of
      its format, ``classifier_config.json`` and ``model.safetensors``, loads the same way). ``pretrained``: an
      open_clip weight tag ("openai", "laion2b_s34b_b88k"), a local checkpoint file (safetensors, or a torch file loaded with
      ``weights_only=True``), or None for random weights;
    - "hf:REPO_OR_FOLDER": a Hugging Face transformers ``CLIPModel`` ("hf:openai/clip-vit-base-patch16"
      downloads when online; offline, a folder with ``config.json`` and ``model.safetensors``);
    - "openai-clip:NAME" with ``pretrained`` a local state dict (safetensors or plain tensors), or
      "openai-clip:FILE": a model of OpenAI's ``clip`` package built from that state dict;
    - image classifiers: "hf:REPO_OR_FOLDER" whose config names an image classifier (a
      ``ViTForImageClassification`` such as "hf:google/vit-base-patch16-224"), or "timm:NAME", a timm
      class-token ViT ("timm:vit_base_patch16_224", "timm:deit_small_patch16_224") with ``pretrained`` None
      (random weights), "timm" (timm's weights, downloaded once) or a local safetensors file, or
      "torchvision:NAME" ("torchvision:vit_b_16") with ``pretrained`` None, a weights tag ("IMAGENET1K_V1")
      or a local state dict. Their targets are classes (``explain_image``'s ``prompts``: class indices or
      label names).

    Local checkpoints, and those in a model folder, are checked before anything is built: a pickle
    holding more than tensors raises ``UnsafeCheckpointError`` without running anything. ``device``
    defaults to CUDA when available. ``precision``: "fp32", "fp16" or "bf16" ("fp16" needs a CUDA
    device). Raises ``WeightsUnavailableError`` when weights cannot be downloaded, and
    ``UnsupportedModelError`` when no adapter explains the model's family.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a model name, got {name!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device) if device is not None else default_device()
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is not supported on the CPU (many half-precision kernels are missing there): "
                         "use precision='fp32' or 'bf16' on the CPU, or a CUDA device for fp16")
    if pretrained is not None and _looks_like_file(pretrained) and not Path(pretrained).is_file():
        raise FileNotFoundError(f"checkpoint file not found: {pretrained}")
    if pretrained is not None and Path(pretrained).is_file():
        check_checkpoint(pretrained)
    if name == SYNTHETIC_CLASSIFIER or synthetic_classifier.is_classifier_folder(name):
        return _load_synthetic_classifier(name, pretrained, device, precision)
    family = family_loader(name)
    if family is not None:
        spec = name[len(family.PREFIX):]
        try:
            model, preprocess, tokenizer = family.load(spec, pretrained=pretrained, device=device,
                                                       dtype=PRECISION_DTYPES[precision], cache_dir=cache_dir)
        except (FileNotFoundError, ImportError, ValueError, TypeError):
            raise  # the family's own, precise errors
        except Exception as error:  # hub clients raise their own exception types
            if not Path(spec).exists() and pretrained is None and _is_download_failure(error):
                raise _weights_error(name, pretrained, f"{type(error).__name__}: {error}", family) from error
            raise
        return _wrap(model, preprocess, tokenizer, name=name, pretrained=pretrained, device=device,
                     precision=precision)
    return _load_open_clip(name, pretrained, device, precision, cache_dir)


PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def named_classifier(name: str) -> str | None:
    """The family of the image classifier that ``name`` names for ``load_model``, told without loading it where
    that costs nothing (a ``timm:`` or ``torchvision:`` name, an ``hf:`` folder whose config names an image
    classifier); None for anything else (a CLIP, or a hub id, which only loading tells), so that a setting a
    classifier refuses can be refused before a model is loaded."""
    if name.startswith(HF_PREFIX) and not Path(name[len(HF_PREFIX):]).is_dir():
        return None
    family = family_loader(name)
    return family.FAMILY if family in CLASSIFIER_FAMILIES else None


def family_loader(name: str):
    """The adapter family whose name prefix ``name`` carries ("hf:", "openai-clip:", "timm:"), or None. Of
    families that share a prefix (Hugging Face CLIP models and image classifiers), one that ``claims`` the
    name (from its config) comes first, then the one that claims nothing."""
    matching = [f for f in FAMILIES if getattr(f, "PREFIX", None) and name.startswith(f.PREFIX)]
    for family in matching:
        if len(matching) == 1 or (hasattr(family, "claims") and family.claims(name[len(family.PREFIX):])):
            return family
    return next((f for f in matching if not hasattr(f, "claims")), None)


def _load_synthetic_classifier(name: str, pretrained: str | None, device: torch.device,
                               precision: str) -> LoadedModel:
    """The embedded synthetic classifier (or a folder of its format): its weights through safetensors, its class
    names, its preprocessing; pictures from outside the synthetic world are warned about, as for the CLIP."""
    folder = SYNTHETIC_CLASSIFIER_DIR if name == SYNTHETIC_CLASSIFIER else Path(name)
    if pretrained is not None:
        raise ValueError(f"{name!r} is a model folder that carries its own weights; leave pretrained=None")
    if not synthetic_classifier.is_classifier_folder(folder):
        raise FileNotFoundError(
            f"The embedded synthetic classifier is missing: {folder} has no {synthetic_classifier.CONFIG_NAME} and "
            f"{synthetic_classifier.WEIGHTS_NAME}. It ships with the repository under data/synthetic_classifier; "
            "train it again with `python -m gradeclip_utils.synthetic.train_classifier --out runs/synthetic_classifier "
            "--export data/synthetic_classifier` (see data/synthetic_classifier/MODEL_CARD.md), or set GRADECLIP_DATA.")
    model, preprocess, classes = synthetic_classifier.load_classifier(folder, device, PRECISION_DTYPES[precision])
    loaded = _wrap(model, preprocess, None, name=name, pretrained=None, device=device, precision=precision,
                   classes=classes)
    loaded.known_inputs = SyntheticWorld("the embedded synthetic classifier")
    return loaded


def _load_open_clip(name: str, pretrained: str | None, device: torch.device, precision: str,
                    cache_dir: str | None) -> LoadedModel:
    import open_clip

    resolved = _resolve_name(name)
    schema = resolved.startswith(("local-dir:", "hf-hub:"))
    if not schema and open_clip.get_model_config(resolved.replace("/", "-")) is None:  # open_clip's own lookup
        raise UnknownModelError(_unknown_model_message(name, open_clip.list_models()))
    if resolved.startswith("local-dir:") and pretrained is not None:
        raise ValueError(f"{name!r} is a model folder that carries its own weights; leave pretrained=None")
    if resolved.startswith("local-dir:") and Path(resolved[len("local-dir:"):]).is_dir():
        for checkpoint in _folder_checkpoints(Path(resolved[len("local-dir:"):])):
            check_checkpoint(checkpoint)
    tag = pretrained is not None and not _looks_like_file(pretrained)  # open_clip takes a known tag before a file
    download = _tag_download(resolved, pretrained, cache_dir) if tag else None
    may_download = tag or resolved.startswith("hf-hub:") or _hub_tokenizer(resolved)
    offline = hub.unreachable(download[0] if download else None) if may_download else None
    if download is not None and not download[1] and offline:  # fail before the model is built
        raise _weights_error(name, pretrained, f"{offline}, and they are not in the local cache")
    try:
        with hub.session(offline is not None):
            model, _, preprocess = open_clip.create_model_and_transforms(
                resolved, pretrained=pretrained, precision=precision, device=device, cache_dir=cache_dir,
                weights_only=True)
    except Exception as error:  # hub clients raise their own exception types
        if tag and _is_download_failure(error):
            raise _weights_error(name, pretrained, f"{type(error).__name__}: {error}") from error
        raise
    try:
        with hub.session(offline is not None):
            tokenizer = open_clip.get_tokenizer(resolved)
    except Exception as error:  # a tokenizer that lives on the hub (SigLIP's, for one)
        if not _is_download_failure(error):
            raise
        tokenizer = _missing_tokenizer(name, error)
    loaded = _wrap(model, preprocess, tokenizer, name=name, pretrained=pretrained, device=device, precision=precision)
    if resolved.startswith("local-dir:") and Path(resolved[len("local-dir:"):]).resolve() == SYNTHETIC_DIR.resolve():
        loaded.known_inputs = SyntheticWorld()  # the embedded model knows only its synthetic world
    return loaded


def _hub_tokenizer(resolved: str) -> bool:
    """Whether the open_clip model's tokenizer lives on the Hugging Face hub (its text_cfg names one)."""
    import open_clip

    if resolved.startswith("local-dir:"):
        try:
            config = json.loads((Path(resolved[len("local-dir:"):]) / "open_clip_config.json").read_text())
            config = config.get("model_cfg", config)
        except (OSError, ValueError):
            return False
    else:
        config = open_clip.get_model_config(resolved) or {}
    return bool(config.get("text_cfg", {}).get("hf_tokenizer_name"))


def _tag_download(resolved: str, tag: str, cache_dir: str | None) -> tuple[str, bool] | None:
    """Where open_clip would download the weights of ``tag`` from (a hub repository's file, or a URL) and whether
    they are in its cache already, as open_clip's ``download_pretrained`` looks; None where open_clip knows no such
    tag for the model (its own error follows)."""
    import open_clip
    from open_clip import pretrained as registry

    config = open_clip.get_pretrained_cfg(resolved, tag)
    if not config or "file" in config:
        return None
    if config.get("hf_hub") and registry.has_hf_hub():
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(config["hf_hub"])
        filename = filename or registry.HF_WEIGHTS_NAME
        alternatives = getattr(registry, "_get_safe_alternatives", lambda name: [])  # open_clip prefers safetensors
        candidates = [*alternatives(filename), filename]
        cached = any(isinstance(try_to_load_from_cache(repo, candidate, cache_dir=cache_dir), str)
                     for candidate in candidates)
        return hub.hub_endpoint(), cached
    url = config.get("url", "")
    if not url:
        return None
    target = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    return url, target.is_file()


def _unknown_model_message(name: str, known: Sequence[str]) -> str:
    if Path(name).is_dir():
        problem = f"the folder {name!r} has no open_clip_config.json"
    else:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        problem = (f"{name!r} is no open_clip model name and no model folder"
                   + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    return (f"unknown model: {problem}. Name an open_clip model (e.g. 'ViT-B-16' or 'RN50'; "
            "open_clip.list_models() lists them), a folder with open_clip_config.json and weights, "
            "'hf:REPO_OR_FOLDER', 'openai-clip:NAME_OR_FILE', or 'synthetic' (the embedded model, which works offline)")


def _missing_tokenizer(name: str, error: BaseException) -> Callable:
    """A stand-in for a tokenizer that could not be had offline: prompts must then be embeddings."""
    reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"

    def tokenizer(texts: Any) -> torch.Tensor:
        raise WeightsUnavailableError(
            f"the tokenizer of {name!r} could not be loaded ({reason}): it lives on the Hugging Face hub. Pass "
            "prompts as (K, D) text embeddings (explain_image(model, images, embeddings, labels=names)), or run "
            "once online so that it is cached.")

    tokenizer.unavailable = True
    return tokenizer


def _is_download_failure(error: BaseException) -> bool:
    text = f"{type(error).__name__}: {error}".lower()
    keys = ("connect", "offline", "resolve", "download", "hub", "http", "network", "timed out", "not found",
            "localentrynotfound", "cannot find", "no such file", "pretrained")
    return any(key in text for key in keys)


def _weights_error(name: str, pretrained: str | None, reason: str, family=None) -> WeightsUnavailableError:
    """The error of weights that could not be had, ``reason`` saying why; the ways round it that the README
    documents."""
    if family is not None:
        return WeightsUnavailableError(
            f"Could not obtain {name!r} ({reason[:300]}). It is downloaded on first use; without network access, "
            f"{family.OFFLINE_HINT}. Offline, the embedded load_model('synthetic') always works.")
    return WeightsUnavailableError(
        f"Could not obtain pretrained weights {pretrained!r} for {name!r} ({reason}). "
        "The weights are downloaded on first use and cached; without network access, download the checkpoint on "
        "another machine and pass its local path instead, e.g. "
        f"load_model({name!r}, pretrained='/path/to/open_clip_model.safetensors'), or a folder with "
        "open_clip_config.json and the weights, load_model('/path/to/folder'). Offline, the embedded "
        "load_model('synthetic') always works.")


def wrap_model(model: nn.Module | tuple[nn.Module, nn.Module], preprocess: Callable | None = None,
               tokenizer: Callable | None = None, *, name: str = "custom", pretrained: str | None = None,
               classes: Sequence[str] | None = None) -> LoadedModel:
    """Wrap a CLIP model you already built (it is put in eval mode): an open_clip model, a Hugging Face
    ``CLIPModel`` (or a ``(CLIPVisionModelWithProjection, CLIPTextModelWithProjection)`` pair), or a model of
    OpenAI's ``clip`` package; or a ViT image classifier: a Hugging Face ``ViTForImageClassification``, a timm
    ``VisionTransformer`` with a class-token head or a torchvision ``VisionTransformer`` (see
    ``adapters/classifier.py``). A classifier's ``classes`` name its classes in the head's order (by default its
    own: ``config.id2label``, timm's ImageNet descriptions, else "class i"); it takes no tokenizer, and its default
    preprocessing normalises with its family's mean and std.

    ``preprocess`` defaults to the model's own image size with CLIP's resize, centre crop and
    normalisation; ``tokenizer`` to open_clip's bundled CLIP tokenizer (the byte-pair vocabulary of
    every CLIP checkpoint: the same ids as Hugging Face's ``CLIPTokenizer`` and OpenAI's
    ``clip.tokenize``, except that it also unescapes HTML entities such as ``&amp;``). A tokenizer you
    pass (open_clip's, or a Hugging Face one) is checked first: one that maps ordinary words to unknown
    or identical ids (an offline ``from_pretrained`` can return such a stub) is refused.

    Raises ``UnsupportedModelError`` naming the family when no adapter explains the model. Half
    precision (fp16) on the CPU is kept as given: it runs where torch has the CPU kernels, and an
    explanation that hits a missing one raises a RuntimeError saying to use ``model.float()``
    (or bf16, or a CUDA device).
    """
    if isinstance(model, (tuple, list)):
        if len(model) != 2 or not all(isinstance(m, nn.Module) for m in model):
            raise TypeError("a model pair is (vision_model_with_projection, text_model_with_projection)")
        model = HFCLIPPair(*model)
    if not isinstance(model, nn.Module):
        raise TypeError(f"wrap_model takes a CLIP model (an nn.Module), got {type(model).__name__}")
    return _wrap(model, preprocess, tokenizer, name=name, pretrained=pretrained, classes=classes)


def _wrap(model: nn.Module, preprocess: Callable | None, tokenizer: Callable | None, *, name: str,
          pretrained: str | None, device: torch.device | None = None, precision: str | None = None,
          classes: Sequence[str] | None = None) -> LoadedModel:
    """The LoadedModel of a built model: eval mode, its adapter (or the family's error), and the
    default preprocessing and tokenizer where none is given. Device and precision default to those of
    the image tower's weights (OpenAI's fp16 models keep some parameters in fp32). A classifier gets its
    ``classes`` names (when given) and a tokenizer that says it takes none."""
    model.eval()
    adapter = get_adapter(model)  # fail early on unsupported families
    if device is None:
        device = adapter.device
    if precision is None:
        precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(adapter.dtype, "fp32")
    if adapter.is_classifier:
        return _wrap_classifier(model, adapter, preprocess, tokenizer, name=name, pretrained=pretrained,
                                device=device, precision=precision, classes=classes)
    if classes is not None:
        raise ValueError("classes name an image classifier's classes; a CLIP model takes prompts instead")
    if preprocess is None:
        preprocess = adapter.default_preprocess()
    if tokenizer is None:
        tokenizer = adapter.own_tokenizer(None) or default_tokenizer(adapter)
    elif not getattr(tokenizer, "unavailable", False):
        tokenizer = checked_tokenizer(adapter.own_tokenizer(tokenizer), adapter.context_length,
                                      getattr(adapter.text, "vocab_size", None))
    loaded = LoadedModel(model=model, preprocess=preprocess, tokenizer=tokenizer, device=device, name=name,
                         pretrained=pretrained, precision=precision)
    loaded.__dict__["adapter"] = adapter
    return loaded


def _wrap_classifier(model: nn.Module, adapter: CLIPAdapter, preprocess: Callable | None, tokenizer: Callable | None,
                     *, name: str, pretrained: str | None, device: torch.device, precision: str,
                     classes: Sequence[str] | None) -> LoadedModel:
    """``_wrap`` for an image classifier: its class names, its family's normalisation, no tokenizer."""
    if tokenizer is not None:
        raise ValueError(f"a {adapter.family} has no text tower: it takes no tokenizer (its targets are classes)")
    if classes is not None:
        adapter.set_labels(classes)
    if preprocess is None:
        import open_clip

        mean, std = adapter.normalization
        preprocess = open_clip.image_transform(adapter.image_size, is_train=False, mean=mean, std=std)
    loaded = LoadedModel(model=model, preprocess=preprocess, tokenizer=no_tokenizer(adapter.family), device=device,
                         name=name, pretrained=pretrained, precision=precision)
    loaded.__dict__["adapter"] = adapter
    return loaded


def no_tokenizer(family: str) -> Callable:
    """The tokenizer of a model without a text tower: any call is an error saying what to give instead."""

    def tokenizer(texts: Any) -> torch.Tensor:
        raise ValueError(f"a {family} has no text tower: its targets are classes, given as class indices or label "
                         "names (explain_image(model, images, ['tabby cat', 281]))")

    tokenizer.unavailable = True
    return tokenizer


def default_tokenizer(adapter: CLIPAdapter) -> Callable:
    """open_clip's bundled CLIP tokenizer at the text tower's context length; refused for a text tower
    whose vocabulary is not CLIP's byte-pair vocabulary."""
    from open_clip.tokenizer import SimpleTokenizer

    vocab = getattr(adapter.text, "vocab_size", None)
    if vocab is not None and vocab != CLIP_VOCAB_SIZE:
        raise ValueError(f"this model's text tower has a vocabulary of {vocab} tokens, not CLIP's {CLIP_VOCAB_SIZE}: "
                         "pass its own tokenizer (wrap_model(model, tokenizer=...))")
    return SimpleTokenizer(context_length=adapter.context_length)


def as_loaded(model: LoadedModel | nn.Module) -> LoadedModel:
    """Accept a LoadedModel; a bare model gets a clear error on what else is needed."""
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, nn.Module):
        raise TypeError("pass the result of gradeclip_utils.load_model(...), or wrap a CLIP model you built with "
                        "gradeclip_utils.wrap_model(model, preprocess=None, tokenizer=None)")
    raise TypeError(f"expected a LoadedModel, got {type(model).__name__}")

