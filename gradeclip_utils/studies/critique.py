"""Is Grad-ECLIP faithful? The critique of Cui and Fan (2026) measured, on any model a user loads.

Five measurements, each a function returning plain numbers (JSON-ready), and ``claims`` turns them into
the sentences that the notebook (08) and ``docs/critique.md`` print, so that every stated number is
read from a run:

1. ``equivalence``: Grad-ECLIP's channel term is the gradient of the score with respect to the class
   token's attention probabilities. The class token's attention output is o = sum_i A[cls, i] v_i, so
   dS/dA^h[cls, i] = (dS/do^h) . v_i^h, and the sum over heads h is sum_c w_c v_i[c]. Checked against
   ``ReLU(lambda_i sum_h dS/dA^h[cls, i])`` computed by autograd on the probabilities the adapter keeps
   (``keep_probs=True``), official mode (one head) and faithful mode (the model's heads), with and
   without the spatial weight lambda, one block and several. ``per_head_terms`` gives the heads' terms.
2. ``route_cost``: the two routes timed side by side (the attention route must keep A and its
   gradient), and the model's own (fused where it has one) forward against a forward that materialises A.
3. ``score_shift``: per image-prompt pair, the model's own forward against the scores of the explained
   forward in a 2 x 2 design: heads (the model's, ``mode="faithful"``, or one, ``mode="official"``) x
   input (native keep-size or the model's resolution); how often the best prompt changes; zero-shot
   accuracy under each.
4. ``faithfulness``: deletion, insertion (the project protocol: the model's preprocessed input at its
   resolution, every curve scored by the unmodified model) and the pointing game for official maps,
   faithful maps and baselines, with paired differences and 95% bootstrap intervals.
5. ``sensitivity_n``: Ancona et al. (2018) for declared baselines (black, blurred, mean colour);
   ``sanity``: cascading randomisation for both modes.

Every part runs on the model given (``--model``, by default the embedded one, and any family); a second run
on a model with random weights (``--random-model``, by default ViT-B-16 at 224 x 224, built offline) reports
only what random weights can show: the equivalence, the cost and the score shift of official mode.

    gradeclip critique --out outputs/critique --doc docs/critique.md
    python -m gradeclip_utils.studies.critique --out outputs/critique --doc docs/critique.md   # the same
    gradeclip critique --model ViT-B-16 --pretrained openai --imagenet /data/imagenet/val --random-model none

This module runs the study (``run_study``, ``random_weight_study``) and the command (``run_command``), and
gives every name of the study: parts 1-3 live in :mod:`.critique_routes`, parts 4-6 in
:mod:`.critique_faithfulness`, the sentences, tables, page and figure in :mod:`.critique_report`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..evaluation import imagenet_set, synthetic_set
from ..loading import load_model
from .common import is_synthetic, tune_threads
from .critique_faithfulness import (BASELINES, FAITHFULNESS_BASELINES, baseline_pictures, faithfulness, load_items,
                                    sanity, sensitivity_n)
from .critique_report import assessment, claims, markdown, plot_heads, tables
from .critique_routes import (MODES, attention_gradients, attention_route_maps, equivalence, grad_eclip_maps,
                              per_head_terms, route_cost, score_shift, synthetic_zero_shot)

__all__ = ["ALL_PARTS", "BASELINES", "DEFAULT_RANDOM_MODEL", "FAITHFULNESS_BASELINES", "MODES", "RANDOM_IMAGES",
           "RANDOM_WEIGHT_PARTS", "RANDOM_ZERO_SHOT", "assessment", "attention_gradients", "attention_route_maps",
           "baseline_pictures", "claims", "equivalence", "faithfulness", "grad_eclip_maps", "markdown",
           "parts_for", "per_head_terms", "plot_heads", "random_weight_study", "route_cost", "run_command",
           "run_study", "sanity", "score_shift", "sensitivity_n", "synthetic_zero_shot", "tables"]

ALL_PARTS: tuple[str, ...] = ("equivalence", "cost", "scores", "faithfulness", "sensitivity", "sanity")
#: what random weights can show (a model without trained weights has no accuracy or localisation to explain)
RANDOM_WEIGHT_PARTS: tuple[str, ...] = ("equivalence", "cost", "scores")
#: the random-weight model of ``gradeclip critique`` (``--random-model``), built offline at its 224 x 224
DEFAULT_RANDOM_MODEL = "ViT-B-16"
#: the random-weight run's sizes: images of the equivalence and the cost, and zero-shot scenes of the score shift
RANDOM_IMAGES, RANDOM_ZERO_SHOT = 2, 16


def parts_for(model: Any) -> tuple[str, ...]:
    """Every part for trained weights (and the embedded model); only the equivalence, the cost and the
    score shift for random weights (``pretrained=None`` on a model other than the embedded one)."""
    return ALL_PARTS if is_synthetic(model) or getattr(model, "pretrained", None) else RANDOM_WEIGHT_PARTS


def run_study(model: Any, *, parts: Sequence[str] | None = None, quick: bool = False, images: int | None = None,
              zero_shot: int | None = None, imagenet: str | Path | None = None, repeats: int | None = None,
              seed: int = 0) -> dict[str, Any]:
    """Every part of the study (``parts``: by default ``parts_for(model)``) at the default sizes (``quick``:
    small). Images for the equivalence and the cost: the first faithfulness items' pixels (synthetic
    scenes) and a non-square crop of them; ``imagenet``: a folder of class subfolders for the score shift
    and the faithfulness items (``evaluation.imagenet_set``)."""
    parts = tuple(parts or parts_for(model))
    unknown = set(parts) - set(ALL_PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; choose from {ALL_PARTS}")
    started = time.perf_counter()
    images = images or (6 if quick else 24)
    zero_shot = zero_shot or (24 if quick else 140)
    repeats = repeats or (2 if quick else 5)
    data = (imagenet_set(model, Path(imagenet), images) if imagenet
            else synthetic_set(model, images))
    results: dict[str, Any] = {"model": model.describe(), "parts": list(parts), "quick": quick,
                               "weights": "random" if parts_for(model) == RANDOM_WEIGHT_PARTS else "trained",
                               "dataset": "imagenet folder" if imagenet else "synthetic held-out scenes",
                               "seed": seed, "threads": torch.get_num_threads()}
    pixels, _ = load_items(data.items[:2])
    targets = data.classifier[:3]
    if "equivalence" in parts:
        ph, pw = model.adapter.patch_size
        wide = pixels[..., : max(ph, (pixels.shape[-2] // ph - 2) * ph), :]  # a non-square input: fewer rows
        results["equivalence"] = equivalence(model, wide, targets)
        results["equivalence"]["square"] = equivalence(model, pixels, targets, layer_sets=((-1,),))["max_abs_diff"]
        results["equivalence"]["square_pixels"] = list(pixels.shape)
        results["per_head"] = per_head_terms(model, pixels, data.classifier[[data.items[0].label]])
    if "cost" in parts:
        results["cost"] = route_cost(model, pixels, data.classifier[:8], repeats=repeats)
    if "scores" in parts:
        if imagenet:
            pictures, labels, names = [i.picture() for i in data.items], [i.label for i in data.items], data.class_names
            results["scores"] = score_shift(model, pictures, labels, names, data.classifier)
        else:
            pictures, labels, names = synthetic_zero_shot(model, zero_shot)
            results["scores"] = score_shift(model, pictures, labels, names)
    if "faithfulness" in parts:
        results["faithfulness"] = faithfulness(model, data, seed=seed)
    if "sensitivity" in parts:
        results["sensitivity"] = sensitivity_n(model, data, subsets=8 if quick else 32, seed=seed,
                                               sizes=(1, 4, 16) if quick else (1, 2, 4, 8, 16, 32))
    if "sanity" in parts:
        results["sanity"] = sanity(model, data, images=1 if quick else 2, seed=seed)
    results["seconds"] = time.perf_counter() - started
    return results


def random_weight_study(name: str = DEFAULT_RANDOM_MODEL, *, device: str | None = None, images: int = RANDOM_IMAGES,
                        zero_shot: int = RANDOM_ZERO_SHOT, repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """``run_study`` on ``name`` with random weights (``load_model(name, pretrained=None)``, offline; the weights
    drawn from ``seed``): only ``RANDOM_WEIGHT_PARTS``, on ``images`` images (equivalence, cost) and ``zero_shot``
    scenes against the 35 class prompts (score shift) at the model's resolution."""
    torch.manual_seed(seed)  # open_clip draws the random weights from torch's generator
    model = load_model(name, pretrained=None, device=device)
    tune_threads(model)
    return run_study(model, parts=RANDOM_WEIGHT_PARTS, images=images, zero_shot=zero_shot, repeats=repeats, seed=seed)


def run_command(parser: argparse.ArgumentParser, args: argparse.Namespace,
                argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``gradeclip critique`` on its parsed arguments (the options are declared in ``cli.py``): the study on
    ``--model``, then the random-weight run on ``--random-model`` unless it is "none"; writes OUT/results.json and,
    with ``--doc``, the page, whose last section is the command line (``parser.prog`` and ``argv``, the command's
    own arguments). Returns the results."""
    model = load_model(args.model, pretrained=args.pretrained, device=args.device)
    tune_threads(model)
    results = run_study(model, parts=args.parts, quick=args.quick, imagenet=args.imagenet, images=args.images,
                        zero_shot=args.zero_shot, seed=args.seed)
    if args.random_model.lower() != "none":
        results["random_model"] = random_weight_study(args.random_model, device=args.device,
                                                      zero_shot=args.random_zero_shot, repeats=2 if args.quick else 5,
                                                      seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    command = " ".join([parser.prog, *(sys.argv[1:] if argv is None else argv)])
    text = markdown(results, command=command)
    if args.doc:
        Path(args.doc).write_text(text)
    print(text)
    return results


if __name__ == "__main__":  # the `gradeclip critique` alias (cli.py declares its options)
    from ..cli import alias

    sys.exit(alias("critique"))
