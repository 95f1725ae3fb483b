"""Official mode on a ViT classifier against the authors' notebook run on the transformers it was written for.

``tests/adapters/test_classifiers.py`` checks the package against the notebook's functions (``tests/support/authors_vit.py``)
on transformers 5.x, through the 4.x module names. This script checks the same on the real transformers 4.x:
step ``main`` (the project's environment, transformers 5.x) saves random weights, inputs and the package's
maps; step ``transformers4`` (the same interpreter with transformers 4.46.3 in front of it) builds the 4.x
``ViTForImageClassification`` with those weights, runs the notebook's functions and the package on it, and
prints the largest differences (over the largest value) and how far the notebook's logits are from the model's.

    python scripts/authors_vit_transformers4.py main /tmp/vit.pt
    pip install --target /tmp/tf4 --no-deps transformers==4.46.3 huggingface_hub==0.26.5 tokenizers==0.20.3
    PYTHONPATH=/tmp/tf4:. python scripts/authors_vit_transformers4.py transformers4 /tmp/vit.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

SIZES = [(48, 80), (64, 96), (64, 64)]
CLASSES = [0, 3, 7]
#: transformers 5.x parameter names -> 4.x
NAMES = {"vit.layers.": "vit.encoder.layer.", "attention.q_proj": "attention.attention.query",
         "attention.k_proj": "attention.attention.key", "attention.v_proj": "attention.attention.value",
         "attention.o_proj": "attention.output.dense", "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def main_step(path: str) -> None:
    import gradeclip_utils as ge
    from classifiers import timm_classifier, to_hf
    from families import non_square_pixels

    hf = to_hf(timm_classifier(image_size=(64, 64)))
    loaded = ge.wrap_model(hf)
    out = {"state": hf.state_dict(), "config": hf.config.to_dict()}
    for size in SIZES:
        x = non_square_pixels(2, size)
        out[size] = {"x": x, **{mode: ge.explain_image(loaded, x, CLASSES, mode=mode, progress=False)
                                for mode in ("faithful", "official")}}
        out[size] = {key: (torch.stack(v.raw), v.scores) if key != "x" else v for key, v in out[size].items()}
    torch.save(out, path)


def transformers4_step(path: str) -> None:
    import transformers
    from transformers import ViTConfig, ViTForImageClassification

    import gradeclip_utils as ge
    from support.authors_vit import authors_maps

    assert transformers.__version__.startswith("4."), transformers.__version__
    data = torch.load(path, weights_only=False)
    config = {k: v for k, v in data["config"].items() if k not in ("transformers_version", "architectures")}
    model = ViTForImageClassification(ViTConfig(**config, attn_implementation="eager")).eval()
    state = {}
    for key, value in data["state"].items():
        for new, old in NAMES.items():
            key = key.replace(new, old)
        state[key] = value
    model.load_state_dict(state)
    loaded = ge.wrap_model(model)
    print(f"transformers {transformers.__version__}: {loaded.adapter}")
    for size in SIZES:
        x = data[size]["x"]
        logits, maps = authors_maps(model, x, CLASSES)
        official = ge.explain_image(loaded, x, CLASSES, mode="official", progress=False)
        faithful = ge.explain_image(loaded, x, CLASSES, progress=False)
        with torch.no_grad():
            native = model(x, interpolate_pos_encoding=True).logits
        print(f"{size}: notebook on 4.x vs the package on 5.x: maps {relative(data[size]['official'][0], maps):.1e}, "
              f"logits {relative(data[size]['official'][1], logits[:, CLASSES]):.1e}; the package on 4.x vs the "
              f"notebook: maps {relative(torch.stack(official.raw), maps):.1e}; faithful 4.x vs 5.x: maps "
              f"{relative(torch.stack(faithful.raw), data[size]['faithful'][0]):.1e}")
        print(f"    the notebook's logits vs the model's: mean |difference| {float((logits - native).abs().mean()):.3f}, "
              f"largest {float((logits - native).abs().max()):.3f} (logits' std {float(native.std()):.3f})")


if __name__ == "__main__":
    {"main": main_step, "transformers4": transformers4_step}[sys.argv[1]](sys.argv[2])
