"""The embedded synthetic classifier: a small timm ViT that names the colour and shape of the objects in a
scene of the synthetic world (35 classes, "red circle" ... "white cross"), its files and its training stream.

It is a timm ``VisionTransformer`` with a class-token head on the embedded CLIP's patch grid (64 x 64 pixels in
8 x 8 patches, an 8 x 8 grid and a class token) with 4 blocks of width 96 (3 heads of 32), trained as a classifier
(``train_classifier.py``): what the authors' ViT notebook explains, offline. Its folder
(``data/synthetic_classifier``) holds ``classifier_config.json`` (timm's constructor arguments, the
preprocessing, the class names) and ``model.safetensors`` (fp32 weights), read only through safetensors;
``load_model("synthetic-classifier")`` loads it.

Training stream (``classifier_batch``): scene id ``k`` is a scene of one object with probability
``single_share``, else of 2-4 objects; its target is the uniform distribution over the colour x shape classes
present in it (each object's class counted once), so that a class's logit answers "is there a red circle?",
which is what a map of that logit on a scene of several objects should show.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .config import write_folder
from .scenes import Scene, generate_scene
from .world import COLOURS, SHAPES

__all__ = ["CLASS_NAMES", "CLASSIFIER_CONFIG", "CONFIG_NAME", "WEIGHTS_NAME", "build_classifier", "class_index",
           "class_targets", "classifier_batch", "classifier_scene", "init_from_clip", "is_classifier_folder",
           "load_classifier", "save_classifier"]

CONFIG_NAME = "classifier_config.json"
WEIGHTS_NAME = "model.safetensors"

#: the classes, colour-major in the world's order (the order of ``captions.class_prompts``' labels)
CLASS_NAMES: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)

#: timm ``VisionTransformer`` arguments (the embedded CLIP's patch grid, a narrower tower: width 96 against the
#: CLIP's 128, to train in minutes on two cores; a 35-class head on the class token), the preprocessing (the
#: CLIP's: a 64 x 64 scene passes unchanged apart from the normalisation) and the class names
CLASSIFIER_CONFIG: dict = {
    "architecture": "timm.models.vision_transformer.VisionTransformer",
    "model_args": {"img_size": 64, "patch_size": 8, "embed_dim": 128, "depth": 4, "num_heads": 4,
                   "mlp_ratio": 4.0, "num_classes": len(CLASS_NAMES), "global_pool": "token", "pre_norm": True},
    "norm_eps": 1e-5,
    "preprocess": {"size": 64, "mean": [0.48145466, 0.4578275, 0.40821073],
                   "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic"},
    "class_names": list(CLASS_NAMES),
}


def class_index(colour: str, shape: str) -> int:
    """The class of an object of ``colour`` and ``shape``."""
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


def build_classifier(config: Optional[dict] = None) -> torch.nn.Module:
    """A freshly initialised timm ``VisionTransformer`` of ``config`` (default: ``CLASSIFIER_CONFIG``; its
    ``norm_eps``, where given, is every LayerNorm's epsilon), with the preprocessing's mean and std as its
    ``pretrained_cfg`` (what ``wrap_model`` normalises a timm model with)."""
    from timm.models.vision_transformer import VisionTransformer

    config = config or CLASSIFIER_CONFIG
    model = VisionTransformer(**config["model_args"])
    if "norm_eps" in config:
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = float(config["norm_eps"])
    model.pretrained_cfg = {"mean": tuple(config["preprocess"]["mean"]), "std": tuple(config["preprocess"]["std"]),
                            "input_size": (3, config["model_args"]["img_size"], config["model_args"]["img_size"]),
                            "num_classes": config["model_args"]["num_classes"]}
    return model


#: the embedded CLIP's image tower (open_clip names) -> the classifier's (timm names), per block: the head and
#: the CLIP's projection to its joint space are not copied
_CLIP_TOWER = {"conv1.weight": "patch_embed.proj.weight", "class_embedding": "cls_token",
               "positional_embedding": "pos_embed", "ln_pre.weight": "norm_pre.weight", "ln_pre.bias": "norm_pre.bias",
               "ln_post.weight": "norm.weight", "ln_post.bias": "norm.bias"}
_CLIP_BLOCK = {"ln_1": "norm1", "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
               "attn.out_proj": "attn.proj", "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def init_from_clip(model: torch.nn.Module, folder: str | Path) -> None:
    """Copy the image tower of the open_clip CLIP in ``folder`` (the embedded one: ``data/synthetic_clip``) into
    ``model``, a classifier of the same shape (patch embedding without bias, ``norm_pre``); every weight but the
    classification head's. Raises when a weight is missing or of another shape."""
    from safetensors.torch import load_file

    stored = load_file(str(Path(folder) / "open_clip_model.safetensors"))
    weights = {key[len("visual."):]: value.float() for key, value in stored.items() if key.startswith("visual.")}
    own = model.state_dict()
    copied = {}
    for key, value in weights.items():
        if key in _CLIP_TOWER:
            copied[_CLIP_TOWER[key]] = value
        elif key.startswith("transformer.resblocks."):
            index, rest = key[len("transformer.resblocks."):].split(".", 1)
            name = next(f"{timm}{rest[len(clip):]}" for clip, timm in _CLIP_BLOCK.items() if rest.startswith(clip))
            copied[f"blocks.{index}.{name}"] = value
    copied["cls_token"] = copied["cls_token"].view(own["cls_token"].shape)
    copied["pos_embed"] = copied["pos_embed"].view(own["pos_embed"].shape)
    missing = sorted(set(own) - set(copied) - {"head.weight", "head.bias"})
    wrong = sorted(k for k, v in copied.items() if k not in own or own[k].shape != v.shape)
    if missing or wrong:
        raise ValueError(f"the CLIP's image tower does not fit the classifier: missing {missing}, unfit {wrong}")
    model.load_state_dict({**own, **copied}, strict=True)


def save_classifier(model: torch.nn.Module, out_dir: str | Path, config: Optional[dict] = None) -> Path:
    """Write ``classifier_config.json`` and ``model.safetensors`` (fp32) into ``out_dir``."""
    return write_folder(model, out_dir, config or CLASSIFIER_CONFIG, torch.float32, CONFIG_NAME, WEIGHTS_NAME)


def is_classifier_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder of this format (``classifier_config.json`` and the weights)."""
    folder = Path(path)
    return (folder / CONFIG_NAME).is_file() and (folder / WEIGHTS_NAME).is_file()


def load_classifier(folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                    ) -> tuple[torch.nn.Module, Callable, list[str]]:
    """The classifier of ``folder`` in eval mode, its preprocessing (open_clip's transform at its size, with its
    mean and std) and its class names. The weights are read with safetensors only, strictly (nothing missing,
    nothing extra)."""
    import open_clip
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    model = build_classifier(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
    model = model.to(device=device, dtype=dtype).eval()
    pre = config["preprocess"]
    preprocess = open_clip.image_transform(pre["size"], is_train=False, mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                                           interpolation=pre.get("interpolation", "bicubic"))
    return model, preprocess, list(config["class_names"])


# ----------------------------------------------------------------------------------------- data
def classifier_scene(index: int, single_share: float = 0.5) -> Scene:
    """Scene id ``index`` of the training stream: one object with probability ``single_share``, else 2-4."""
    rng = np.random.default_rng([int(index), 11])
    n = 1 if rng.random() < single_share else int(rng.integers(2, 5))
    return generate_scene(int(index), n_objects=n, with_captions=False)


def class_targets(scenes: Sequence[Scene]) -> torch.Tensor:
    """(B, 35) targets: uniform over the classes present in each scene (an object's class counted once)."""
    targets = torch.zeros(len(scenes), len(CLASS_NAMES))
    for row, scene in enumerate(scenes):
        present = sorted({class_index(o.colour, o.shape) for o in scene.objects})
        targets[row, present] = 1.0 / len(present)
    return targets


def classifier_batch(step: int, batch_size: int, single_share: float = 0.5) -> dict[str, Any]:
    """Training batch ``step``: scene ids ``step * batch_size ...`` (uint8 images B x 3 x H x W, targets)."""
    scenes = [classifier_scene(k, single_share) for k in range(step * batch_size, (step + 1) * batch_size)]
    images = np.stack([s.array for s in scenes]).transpose(0, 3, 1, 2)
    return {"images": torch.from_numpy(np.ascontiguousarray(images)), "targets": class_targets(scenes)}
