"""The open_clip configuration of the embedded synthetic CLIP, and saving it in open_clip's
``local-dir:`` format (``open_clip_config.json`` + ``open_clip_model.safetensors``)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Optional

import torch

__all__ = ["OPEN_CLIP_CONFIG", "CONFIG_NAME", "WEIGHTS_NAME", "build_model", "save_model",
           "image_mean_std"]

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"

#: A small ViT CLIP: 64x64 images in 8x8 patches (an 8x8 grid + class token), 4 standard residual
#: attention blocks of width 128 (4 heads of 32), class-token pooling; a 4-block text transformer of width
#: 96 over open_clip's standard BPE tokenizer (vocabulary 49408) with a context of 32 tokens and argmax
#: (EOT) pooling; 128-d joint embedding. The preprocessing keeps a 64x64 scene unchanged apart from
#: scaling to [0, 1] and normalising with OpenAI CLIP's mean and std.
OPEN_CLIP_CONFIG: dict = {
    "model_cfg": {
        "embed_dim": 128,
        "vision_cfg": {
            "image_size": 64,
            "patch_size": 8,
            "width": 128,
            "layers": 4,
            "head_width": 32,
            "mlp_ratio": 4.0,
            "pool_type": "tok",
        },
        "text_cfg": {
            "context_length": 32,
            "vocab_size": 49408,
            "width": 96,
            "heads": 3,
            "layers": 4,
            "mlp_ratio": 4.0,
        },
    },
    "preprocess_cfg": {
        "size": 64,
        "mode": "RGB",
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "fill_color": 0,
    },
}


def image_mean_std(config: Optional[dict] = None) -> tuple[list[float], list[float]]:
    cfg = (config or OPEN_CLIP_CONFIG)["preprocess_cfg"]
    return list(cfg["mean"]), list(cfg["std"])


def build_model(config: Optional[dict] = None):
    """A freshly initialised open_clip ``CLIP`` of the given (default: the synthetic) configuration."""
    from open_clip.model import CLIP

    cfg = copy.deepcopy((config or OPEN_CLIP_CONFIG)["model_cfg"])
    return CLIP(**cfg)


def save_model(model: torch.nn.Module, out_dir: str | Path, config: Optional[dict] = None,
               dtype: torch.dtype = torch.float16) -> Path:
    """Write ``open_clip_config.json`` and ``open_clip_model.safetensors`` (weights cast to ``dtype``;
    open_clip casts them back to the model's precision on loading) into ``out_dir``."""
    return write_folder(model, out_dir, config or OPEN_CLIP_CONFIG, dtype, CONFIG_NAME, WEIGHTS_NAME)


def write_folder(model: torch.nn.Module, out_dir: str | Path, config: dict, dtype: torch.dtype, config_name: str,
                 weights_name: str) -> Path:
    """Write ``config`` as JSON (``config_name``) and the model's weights, floating ones cast to ``dtype``, as
    safetensors (``weights_name``, written to a temporary file first) into ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    tmp = out / (weights_name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)
    tmp.replace(out / weights_name)
    with open(out / config_name, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return out
